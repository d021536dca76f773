using System.Diagnostics;
using System.Globalization;
using Spectre.Console;

namespace Sudo.Training;

/// <summary>Reports a training loop: a Spectre.Console progress bar (step, loss, accuracy, LR, it/s, ETA) on an
/// interactive terminal, plain lines every <c>logEvery</c> steps otherwise (redirected output, CI, or a caller
/// that passes its own log). Messages (checkpoints saved, sample grids) print above the bar.</summary>
public sealed class TrainingProgress
{
    private readonly Action<string> _log;
    private readonly int _total, _start, _logEvery;
    private readonly Stopwatch _sw = Stopwatch.StartNew();
    private readonly ProgressTask? _task;

    private TrainingProgress(Action<string> log, int total, int start, int logEvery, ProgressTask? task)
    {
        (_log, _total, _start, _logEvery, _task) = (log, total, start, logEvery, task);
    }

    /// <summary>True when stdout is a terminal that can redraw a bar (and not under CI).</summary>
    public static bool Interactive =>
        !Console.IsOutputRedirected && string.IsNullOrEmpty(Environment.GetEnvironmentVariable("CI"))
        && AnsiConsole.Profile.Capabilities.Interactive;

    /// <summary>Runs <paramref name="body"/> with a reporter. With <paramref name="log"/> null and an interactive
    /// terminal the reporter draws a progress bar; otherwise it prints lines through <paramref name="log"/>
    /// (Console.WriteLine by default).</summary>
    public static void Run(string title, int total, int start, int logEvery, Action<string>? log, Action<TrainingProgress> body)
    {
        if (log != null || !Interactive)
        {
            body(new TrainingProgress(log ?? Console.WriteLine, total, start, Math.Max(1, logEvery), null));
            return;
        }
        AnsiConsole.Progress()
            .AutoClear(false)
            .HideCompleted(false)
            .Columns(new TaskDescriptionColumn { Alignment = Justify.Left }, new ProgressBarColumn { Width = 16 }, new RemainingTimeColumn())
            .Start(ctx =>
            {
                var task = ctx.AddTask(Markup.Escape(title), maxValue: Math.Max(1, total));
                task.Value = start;
                body(new TrainingProgress(m => AnsiConsole.MarkupLine(Markup.Escape(m)), total, start, logEvery, task));
                task.Value = task.MaxValue;
            });
    }

    /// <summary>A message line (above the bar when one is drawn).</summary>
    public void Log(string message) => _log(message);

    /// <summary>One finished optimizer step with its metrics (loss, implicit_acc, lr, … as available).</summary>
    public void Step(int step, IReadOnlyDictionary<string, double> m)
    {
        var text = Line(step, m);
        if (_task != null) text = text.Replace("  ", " ");
        if (_task != null)
        {
            _task.Value = step;
            _task.Description = Markup.Escape(text);
        }
        else if (step % _logEvery == 0 || step == _total)
        {
            _log(text);
        }
    }

    private string Line(int step, IReadOnlyDictionary<string, double> m)
    {
        var rate = (step - _start) / Math.Max(1e-9, _sw.Elapsed.TotalSeconds);
        var eta = Math.Max(0, _total - step) / Math.Max(1e-9, rate);
        var parts = new List<string> { _task == null ? $"step {step,6}/{_total}" : $"{step}/{_total}" };
        void Add(string key, string label, string format)
        {
            if (m.TryGetValue(key, out var v)) parts.Add(label + " " + v.ToString(format, CultureInfo.InvariantCulture));
        }
        Add("loss", "loss", "F5");
        Add("implicit_acc", "acc", "F3");
        Add("ratio_w", "ratio_w", "F4");
        Add("ratio_l", "ratio_l", "F4");
        Add("pairs_in_round", "pairs", "F0");
        Add("lr", "lr", "g3");
        Add("grad_scale", "scale", "g3");
        parts.Add($"{rate.ToString("F2", CultureInfo.InvariantCulture)} it/s");
        if (_task == null) parts.Add("eta " + (double.IsFinite(eta) && eta < 1e9 ? $"{(long)eta / 3600:D2}:{(long)eta / 60 % 60:D2}:{(long)eta % 60:D2}" : "?"));
        return string.Join("  ", parts);
    }
}
