// `sudoml bench data`: pairs/s through the training loader (JPEG decode + resize + crop + flip + [−1, 1]) at 512
// and 1024 px for 1, 2 and 4 workers, on a generated Pick-a-Pic-layout parquet dataset (real JPEGs at Pick-a-Pic
// sizes: 512², 768², 1024²), and the peak RSS of the same number of pairs (three epochs of the first) read from
// that dataset and from one 10× larger. Each
// measurement runs in its own process (peak RSS is per process). Printed only, never asserted.
using System.Diagnostics;
using System.Text.Json;
using ParquetSharp;
using Sudo.Data;
using Sudo.Torch;

namespace Sudo.Bench;

public sealed record DataBenchRow(int resolution, int workers, int pairs, double pairs_per_s, double peak_rss_mb);
public sealed record DataBenchResult(string cpu, int dataset_pairs, double dataset_mb, IReadOnlyList<DataBenchRow> rows,
    double peak_rss_mb_dataset, double peak_rss_mb_dataset_10x, int dataset_10x_pairs, double gpu_need_pairs_per_s, string note);

public static class DataBench
{
    public const string ChildVariable = "SUDO_BENCH_DATA_CHILD";
    /// <summary>Diffusion-DPO's SD1.5 run: ~3 pairs/s per A100 (what one GPU consumes; the loader must keep up).</summary>
    public const double GpuNeedPairsPerSecond = 3.0;

    /// <summary>Writes <paramref name="pairs"/> Pick-a-Pic rows (caption, jpg_0, jpg_1, label_0, model_0/1, ranking_id) as
    /// parquet shards of 500 rows in row groups of 50, drawing images from a pool of real JPEGs (smooth colour fields
    /// with texture, quality 90) at Pick-a-Pic sizes.</summary>
    public static void Generate(string dir, int pairs, int seed = 0)
    {
        Directory.CreateDirectory(dir);
        var rng = new Random(seed);
        int[] sides = [512, 768, 1024];
        var pool = Enumerable.Range(0, 48).Select(i => MakeJpeg(sides[i % 3], rng)).ToArray();
        const int perFile = 500, perGroup = 50;
        var columns = new Column[]
        {
            new Column<string>("caption"), new Column<byte[]>("jpg_0"), new Column<byte[]>("jpg_1"), new Column<double?>("label_0"),
            new Column<string>("model_0"), new Column<string>("model_1"), new Column<long?>("ranking_id"),
        };
        for (int file = 0, row = 0; row < pairs; file++)
        {
            var path = Path.Combine(dir, $"train-{file:00000}-of-{(pairs + perFile - 1) / perFile:00000}.parquet");
            using var w = new ParquetFileWriter(path, columns, Compression.Snappy);
            for (var g = 0; g < perFile / perGroup && row < pairs; g++)
            {
                var n = Math.Min(perGroup, pairs - row);
                var idx = Enumerable.Range(row, n).ToArray();
                using var rg = w.AppendRowGroup();
                using (var c = rg.NextColumn().LogicalWriter<string>()) c.WriteBatch(idx.Select(i => $"a generated scene number {i}, detailed, 4k").ToArray());
                using (var c = rg.NextColumn().LogicalWriter<byte[]>()) c.WriteBatch(idx.Select(i => pool[(2 * i) % pool.Length]).ToArray());
                using (var c = rg.NextColumn().LogicalWriter<byte[]>()) c.WriteBatch(idx.Select(i => pool[(2 * i + 1) % pool.Length]).ToArray());
                using (var c = rg.NextColumn().LogicalWriter<double?>()) c.WriteBatch(idx.Select(i => (double?)(i % 2)).ToArray());
                using (var c = rg.NextColumn().LogicalWriter<string>()) c.WriteBatch(idx.Select(_ => "dreamlike-art/dreamlike-photoreal-2.0").ToArray());
                using (var c = rg.NextColumn().LogicalWriter<string>()) c.WriteBatch(idx.Select(_ => "stabilityai/stable-diffusion-2-1").ToArray());
                using (var c = rg.NextColumn().LogicalWriter<long?>()) c.WriteBatch(idx.Select(i => (long?)i).ToArray());
                row += n;
            }
            w.Close();
        }
    }

    private static byte[] MakeJpeg(int side, Random rng)
    {
        var px = new byte[side * side * 3];
        var f = Enumerable.Range(0, 9).Select(_ => rng.NextDouble() * 0.05).ToArray();
        for (var y = 0; y < side; y++)
            for (var x = 0; x < side; x++)
                for (var c = 0; c < 3; c++)
                {
                    var v = 128 + 90 * Math.Sin(f[c] * x + f[c + 3] * y + c) * Math.Cos(f[c + 6] * (x - y)) + rng.Next(-12, 13);
                    px[(y * side + x) * 3 + c] = (byte)Math.Clamp(v, 0, 255);
                }
        return ImageCodecs.EncodeJpeg(new RgbImage(side, side, px), 90);
    }

    /// <summary>One measurement in this process: pairs/s of the loader over <paramref name="pairs"/> pairs.</summary>
    public static DataBenchRow Measure(string dir, int resolution, int workers, int pairs)
    {
        using var data = PreferenceData.Open(dir);
        var batch = 4;
        using var loader = new PairLoader(data, new LoaderOptions { resolution = resolution, batch_size = batch, seed = 0, random_crop = true, workers = workers, prefetch_batches = 2 });
        loader.Next().ToList().ForEach(p => p.Dispose());   // warm-up: first block read, thread start
        var sw = Stopwatch.StartNew();
        var done = 0;
        while (done < pairs)
        {
            foreach (var p in loader.Next()) p.Dispose();
            done += batch;
        }
        return new DataBenchRow(resolution, workers, done, done / sw.Elapsed.TotalSeconds, ProcessMemory.PeakRssMb());
    }

    /// <summary>Runs every configuration in a child process (<paramref name="self"/>: the command that re-enters
    /// `sudoml bench data`, e.g. ["dotnet", "sudoml.dll", "bench", "data"]).</summary>
    public static DataBenchResult Run(string[] self, int pairs = 500, Action<string>? log = null)
    {
        log ??= Console.Error.WriteLine;
        var root = Path.Combine(Path.GetTempPath(), $"sudo-databench-{Environment.ProcessId}");
        try
        {
            var small = Path.Combine(root, "x1");
            var large = Path.Combine(root, "x10");
            log($"generating {pairs} and {10 * pairs} pairs of JPEGs in {root} ...");
            Generate(small, pairs);
            Generate(large, 10 * pairs);
            var mb = Directory.GetFiles(small).Sum(f => new FileInfo(f).Length) / 1048576.0;
            var rows = new List<DataBenchRow>();
            foreach (var res in new[] { 512, 1024 })
                foreach (var w in new[] { 1, 2, 4 })
                {
                    var r = Child(self, small, res, w, res == 512 ? 96 : 48);
                    log($"{res} px, {w} worker(s): {r.pairs_per_s:F2} pairs/s (peak RSS {r.peak_rss_mb:F0} MB)");
                    rows.Add(r);
                }
            // Memory: the same number of pairs (three epochs of the small set: past the first evictions, in the steady
            // state) from the small and from the 10× dataset.
            var a = Child(self, small, 512, 2, 3 * pairs);
            var b = Child(self, large, 512, 2, 3 * pairs);
            log($"peak RSS over {3 * pairs} pairs: {a.peak_rss_mb:F0} MB ({pairs} pairs in the dataset) vs {b.peak_rss_mb:F0} MB ({10 * pairs})");
            return new DataBenchResult(CpuFeatures.Detect().Summary, pairs, Math.Round(mb, 1), rows, a.peak_rss_mb, b.peak_rss_mb, 10 * pairs, GpuNeedPairsPerSecond,
                "Diffusion-DPO trains ~3 pairs/s per A100 at SD1.5 (one GPU's need); loader rows are pairs/s on this CPU");
        }
        finally
        {
            if (Directory.Exists(root)) Directory.Delete(root, true);
        }
    }

    private static DataBenchRow Child(string[] self, string dir, int res, int workers, int pairs)
    {
        var psi = new ProcessStartInfo(self[0]) { RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in self.Skip(1)) psi.ArgumentList.Add(a);
        psi.Environment[ChildVariable] = $"{dir}|{res}|{workers}|{pairs}";
        using var p = Process.Start(psi)!;
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0) throw new InvalidOperationException($"data bench child failed ({p.ExitCode}): {output}");
        return JsonSerializer.Deserialize<DataBenchRow>(output.Trim().Split('\n').Last())!;
    }

    /// <summary>The child side: reads the configuration from the environment, prints one JSON row.</summary>
    public static bool RunChildIfAsked()
    {
        if (Environment.GetEnvironmentVariable(ChildVariable) is not { } spec) return false;
        var parts = spec.Split('|');
        var row = Measure(parts[0], int.Parse(parts[1]), int.Parse(parts[2]), int.Parse(parts[3]));
        Console.WriteLine(JsonSerializer.Serialize(row));
        return true;
    }
}
