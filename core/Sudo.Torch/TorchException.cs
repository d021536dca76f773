namespace Sudo.Torch;

/// <summary>A libtorch error, naming the op that raised it and carrying libtorch's own message.</summary>
public sealed class TorchException : Exception
{
    public string Op { get; }
    public string NativeMessage { get; }

    public TorchException(string op, string nativeMessage)
        : base($"{op}: {nativeMessage}")
    {
        Op = op;
        NativeMessage = nativeMessage;
    }
}
