// The stand-in "model" of a scheduler golden file, read from its params.json `fake_model` string, e.g.
// "model_output = 0.1 * scale_model_input(x, t) + 0.05 * float(t) / 1000". The string is parsed as data, never run:
// numbers, x (the trajectory's current sample), t (the timestep), scale_model_input(x, t), float(·), + − * /,
// parentheses and unary signs. Python's precedence and left-to-right association; scalar sub-expressions are
// evaluated in float64 and applied to the float32 sample as PyTorch applies a Python float.
using System.Globalization;
using Sudo.Diffusion;
using Sudo.Models;
using Sudo.Preference;
using Sudo.Torch;
namespace Sudo.Parity;

public sealed class FakeModel
{
    private abstract record Node;
    private sealed record Num(double Value) : Node;
    private sealed record Var(string Name) : Node;
    private sealed record ScaleInput : Node;
    private sealed record Unary(char Op, Node Arg) : Node;
    private sealed record Binary(char Op, Node Left, Node Right) : Node;

    private readonly Node _root;
    public string Source { get; }

    private FakeModel(string source, Node root)
    {
        Source = source;
        _root = root;
    }

    /// <summary>Parses the expression; an InvalidDataException names what it did not understand and what it accepts.</summary>
    public static FakeModel Parse(string source, string where = "fake_model")
    {
        var p = new Parser(source, where);
        var root = p.Statement();
        return new FakeModel(source, root);
    }

    /// <summary>model_output for sample <paramref name="x"/> at timestep <paramref name="t"/>.</summary>
    public Tensor Evaluate(Scheduler scheduler, Tensor x, double t)
    {
        var v = Eval(_root, scheduler, x, t);
        return v.tensor ?? throw new InvalidDataException($"fake model '{Source}' is a constant ({v.scalar}): it never reads the sample");
    }

    private static (Tensor? tensor, double scalar) Eval(Node n, Scheduler s, Tensor x, double t) => n switch
    {
        Num c => (null, c.Value),
        Var { Name: "x" } => (x, 0),
        Var { Name: "t" } => (null, t),
        ScaleInput => (s.scale_model_input(x, t), 0),
        Unary u => Eval(u.Arg, s, x, t) switch
        {
            (null, var a) => (null, u.Op == '-' ? -a : a),
            (var a, _) => (u.Op == '-' ? 0.0 - a : a, 0),
        },
        Binary b => Apply(b.Op, Eval(b.Left, s, x, t), Eval(b.Right, s, x, t)),
        _ => throw new InvalidOperationException(n.ToString()),
    };

    private static (Tensor?, double) Apply(char op, (Tensor? t, double s) l, (Tensor? t, double s) r)
    {
        if (l.t is null && r.t is null)
            return (null, op switch { '+' => l.s + r.s, '-' => l.s - r.s, '*' => l.s * r.s, _ => l.s / r.s });
        if (l.t is not null && r.t is not null)
            return (op switch { '+' => l.t + r.t, '-' => l.t - r.t, '*' => l.t * r.t, _ => l.t / r.t }, 0);
        if (l.t is not null)
            return (op switch { '+' => l.t + r.s, '-' => l.t - r.s, '*' => l.t * r.s, _ => l.t / r.s }, 0);
        var rt = r.t!;
        return (op switch { '+' => l.s + rt, '-' => l.s - rt, '*' => l.s * rt, _ => l.s / rt }, 0);
    }

    private sealed class Parser(string src, string where)
    {
        private int _pos;
        private const string Accepts = "numbers, x, t, scale_model_input(x, t), float(expr), + - * /, parentheses";

        private InvalidDataException Error(string what) =>
            new($"{where}: cannot interpret the fake model '{src}': {what} at character {_pos + 1} (the harness understands {Accepts}, optionally after 'model_output =')");

        private void Skip()
        {
            while (_pos < src.Length && char.IsWhiteSpace(src[_pos])) _pos++;
        }

        private bool Eat(char c)
        {
            Skip();
            if (_pos < src.Length && src[_pos] == c)
            {
                _pos++;
                return true;
            }
            return false;
        }

        private void Expect(char c)
        {
            if (!Eat(c)) throw Error($"expected '{c}'");
        }

        private string? Identifier()
        {
            Skip();
            var start = _pos;
            while (_pos < src.Length && (char.IsLetterOrDigit(src[_pos]) || src[_pos] == '_') && (_pos > start || !char.IsDigit(src[_pos]))) _pos++;
            return _pos > start ? src[start.._pos] : null;
        }

        public Node Statement()
        {
            Skip();
            var save = _pos;
            if (Identifier() == "model_output" && Eat('=')) { }
            else _pos = save;
            var e = Expr();
            Skip();
            if (_pos != src.Length) throw Error($"unexpected '{src[_pos..]}'");
            return e;
        }

        private Node Expr()
        {
            var n = Term();
            while (true)
            {
                if (Eat('+')) n = new Binary('+', n, Term());
                else if (Eat('-')) n = new Binary('-', n, Term());
                else return n;
            }
        }

        private Node Term()
        {
            var n = Factor();
            while (true)
            {
                Skip();
                if (_pos + 1 < src.Length && src[_pos] == '*' && src[_pos + 1] == '*') throw Error("'**' (power) is not supported");
                if (_pos + 1 < src.Length && src[_pos] == '/' && src[_pos + 1] == '/') throw Error("'//' (floor division) is not supported");
                if (Eat('*')) n = new Binary('*', n, Factor());
                else if (Eat('/')) n = new Binary('/', n, Factor());
                else return n;
            }
        }

        private Node Factor()
        {
            if (Eat('-')) return new Unary('-', Factor());
            if (Eat('+')) return Factor();
            if (Eat('('))
            {
                var e = Expr();
                Expect(')');
                return e;
            }
            Skip();
            if (_pos < src.Length && (char.IsDigit(src[_pos]) || src[_pos] == '.')) return Number();
            var start = _pos;
            var id = Identifier() ?? throw Error(_pos < src.Length ? $"unexpected '{src[_pos]}'" : "unexpected end");
            switch (id)
            {
                case "x": return new Var("x");
                case "t": return new Var("t");
                case "float":
                    {
                        Expect('(');
                        var e = Expr();
                        Expect(')');
                        return e;
                    }
                case "scale_model_input":
                    {
                        Expect('(');
                        if (Identifier() != "x") throw Error("scale_model_input's first argument must be x");
                        Expect(',');
                        if (Identifier() != "t") throw Error("scale_model_input's second argument must be t");
                        Expect(')');
                        return new ScaleInput();
                    }
                default:
                    _pos = start;
                    throw Error($"unknown name '{id}'");
            }
        }

        private Node Number()
        {
            var start = _pos;
            while (_pos < src.Length && (char.IsDigit(src[_pos]) || src[_pos] == '.')) _pos++;
            if (_pos < src.Length && (src[_pos] == 'e' || src[_pos] == 'E'))
            {
                _pos++;
                if (_pos < src.Length && (src[_pos] == '+' || src[_pos] == '-')) _pos++;
                while (_pos < src.Length && char.IsDigit(src[_pos])) _pos++;
            }
            var text = src[start.._pos];
            if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out var v))
            {
                _pos = start;
                throw Error($"'{text}' is not a number");
            }
            return new Num(v);
        }
    }
}
