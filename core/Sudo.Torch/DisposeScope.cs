namespace Sudo.Torch;

/// <summary>Deterministic disposal: every tensor created on this thread while the scope is the innermost
/// one is disposed with it, except those moved out (<see cref="MoveToOuter"/>) or turned into parameters.
/// Scopes are per thread; one per training or sampling step.</summary>
public sealed class DisposeScope : IDisposable
{
    [ThreadStatic] private static DisposeScope? _current;

    private readonly List<Tensor> _owned = new(64);
    private readonly DisposeScope? _outer;
    private readonly int _threadId;
    private bool _disposed;

    internal DisposeScope()
    {
        _outer = _current;
        _threadId = Environment.CurrentManagedThreadId;
        _current = this;
    }

    /// <summary>The innermost scope of this thread, if any.</summary>
    public static DisposeScope? Current => _current;

    /// <summary>Tensors this scope will dispose.</summary>
    public int Count
    {
        get
        {
            var n = 0;
            foreach (var t in _owned)
                if (t.Owner == this && !t.IsDisposed) n++;
            return n;
        }
    }

    internal void Register(Tensor t)
    {
        t.Owner = this;
        _owned.Add(t);
    }

    /// <summary>Hands the tensor to the enclosing scope (or to nobody when there is none).</summary>
    public T MoveToOuter<T>(T t) where T : Tensor
    {
        if (t.Owner == this)
        {
            t.Owner = null;
            _outer?.Register(t);
        }
        return t;
    }

    public (T1, T2) MoveToOuter<T1, T2>(T1 a, T2 b) where T1 : Tensor where T2 : Tensor => (MoveToOuter(a), MoveToOuter(b));

    /// <summary>A new handle to <paramref name="t"/>'s values (detached from autograd) that no dispose scope owns: what a
    /// trace callback receives, or state kept across calls. The receiver disposes it.</summary>
    public static Tensor HandOut(Tensor t)
    {
        var own = t.detach();
        _current?.Detach(own);
        return own;
    }

    /// <summary>Removes the tensor from this scope: the caller disposes it.</summary>
    public T Detach<T>(T t) where T : Tensor
    {
        if (t.Owner == this) t.Owner = null;
        return t;
    }

    public void Dispose()
    {
        if (_disposed) return;
        if (Environment.CurrentManagedThreadId != _threadId)
            throw new InvalidOperationException("a DisposeScope must be disposed on the thread that created it");
        if (_current != this)
            throw new InvalidOperationException("DisposeScopes must be disposed innermost first");
        _disposed = true;
        _current = _outer;
        foreach (var t in _owned)
            if (t.Owner == this)
            {
                t.Owner = null;
                t.Dispose();
            }
        _owned.Clear();
    }
}
