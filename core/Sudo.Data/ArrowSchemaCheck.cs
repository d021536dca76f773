// A bounds-checked walk over an Arrow IPC stream's schema message before Apache.Arrow reads it. Apache.Arrow builds the
// schema recursively from the flatbuffer (MessageSerializer.FieldFromFlatbuffer, once per child field) and trusts the
// offsets in it: a field whose children point back at an ancestor recursed until the stack overflowed, which kills the
// process (a .NET stack overflow cannot be caught) — found by scripts/fuzz.sh arrow. This walk follows the same
// references (Message.header → Schema.fields → Field.children, the Arrow format's Schema.fbs / Message.fbs) with every
// offset checked against the message, and refuses nesting deeper than MaxDepth (a cycle is infinitely deep) or more
// than MaxFields field visits (children shared in a lattice would multiply the work).
using System.Buffers.Binary;

namespace Sudo.Data;

public static class ArrowSchemaCheck
{
    /// <summary>Nesting of struct/list fields accepted (Pick-a-Pic's columns are flat; real schemas nest a few levels).</summary>
    public const int MaxDepth = 64;
    /// <summary>Field visits accepted in one schema.</summary>
    public const int MaxFields = 1 << 16;

    /// <summary>Checks the first message of an Arrow IPC stream (its schema); <paramref name="stream"/> needs only hold
    /// that message. Throws InvalidDataException naming <paramref name="source"/>.</summary>
    public static void Validate(ReadOnlySpan<byte> stream, string source)
    {
        if (stream.Length < 8) throw Bad(source, "shorter than a message header");
        var at = 0;
        var len = BinaryPrimitives.ReadInt32LittleEndian(stream);
        if (len == -1)   // continuation marker (format ≥ 0.15), then the metadata length
        {
            at = 4;
            len = BinaryPrimitives.ReadInt32LittleEndian(stream[4..]);
        }
        at += 4;
        if (len <= 0 || len > stream.Length - at) throw Bad(source, $"schema message of {len} bytes, {stream.Length - at} available");
        var buf = stream.Slice(at, len);
        var fields = 0;
        var message = Table(buf, 0, source);
        if (Scalar<byte>(buf, message, 1, source) != 1) return;   // header_type 1 = Schema; anything else Apache.Arrow rejects itself
        var schema = Ref(buf, message, 2, source);
        if (schema < 0) throw Bad(source, "schema message without a schema");
        var list = Ref(buf, Table(buf, schema, source, absolute: true), 1, source);
        if (list >= 0) Fields(buf, list, 1, ref fields, source);
    }

    /// <summary>The largest prefix <see cref="Validate"/> may need: the two length words and the longest accepted message.</summary>
    public static int PrefixBytes(ReadOnlySpan<byte> first8)
    {
        if (first8.Length < 8) return first8.Length;
        var len = BinaryPrimitives.ReadInt32LittleEndian(first8);
        var at = 4;
        if (len == -1) { len = BinaryPrimitives.ReadInt32LittleEndian(first8[4..]); at = 8; }
        return len <= 0 ? 8 : (int)Math.Min((long)at + len, int.MaxValue);
    }

    private static void Fields(ReadOnlySpan<byte> buf, int vector, int depth, ref int visits, string source)
    {
        if (depth > MaxDepth) throw Bad(source, $"fields nested more than {MaxDepth} deep (or a field is its own descendant)");
        var n = U32(buf, vector, source);
        if (n > (uint)((buf.Length - vector - 4) / 4)) throw Bad(source, $"a field list of {n} entries overruns the message");
        for (var i = 0; i < (int)n; i++)
        {
            if (++visits > MaxFields) throw Bad(source, $"more than {MaxFields} fields");
            var slot = vector + 4 + 4 * i;
            var field = Table(buf, checked(slot + (int)U32(buf, slot, source)), source, absolute: true);
            var children = Ref(buf, field, 5, source);
            if (children >= 0) Fields(buf, children, depth + 1, ref visits, source);
        }
    }

    /// <summary>The table at <paramref name="pos"/> (absolute) or at the root offset stored at <paramref name="pos"/>;
    /// returns its position after checking its vtable lies in the message.</summary>
    private static int Table(ReadOnlySpan<byte> buf, int pos, string source, bool absolute = false)
    {
        var t = absolute ? pos : checked(pos + (int)U32(buf, pos, source));
        var v = (long)t - BinaryPrimitives.ReadInt32LittleEndian(Slice(buf, t, 4, source));
        if (v < 0 || v + 4 > buf.Length) throw Bad(source, $"a table's vtable at {v} lies outside the message");
        var vsize = BinaryPrimitives.ReadUInt16LittleEndian(buf[(int)v..]);
        if (vsize < 4 || v + vsize > buf.Length) throw Bad(source, "a vtable overruns the message");
        return t;
    }

    /// <summary>Position of field <paramref name="index"/> of the table at <paramref name="t"/>, or −1 when absent.</summary>
    private static int FieldPos(ReadOnlySpan<byte> buf, int t, int index, string source)
    {
        var v = t - BinaryPrimitives.ReadInt32LittleEndian(buf[t..]);
        var vsize = BinaryPrimitives.ReadUInt16LittleEndian(buf[v..]);
        if (4 + 2 * index + 2 > vsize) return -1;
        var off = BinaryPrimitives.ReadUInt16LittleEndian(buf[(v + 4 + 2 * index)..]);
        return off == 0 ? -1 : t + off;
    }

    /// <summary>The target of an offset-typed field (table, vector, union), or −1 when absent.</summary>
    private static int Ref(ReadOnlySpan<byte> buf, int t, int index, string source)
    {
        var p = FieldPos(buf, t, index, source);
        if (p < 0) return -1;
        var target = (long)p + U32(buf, p, source);
        if (target + 4 > buf.Length) throw Bad(source, $"an offset points to {target}, past the message's {buf.Length} bytes");
        return (int)target;
    }

    private static T Scalar<T>(ReadOnlySpan<byte> buf, int t, int index, string source) where T : unmanaged
    {
        var p = FieldPos(buf, t, index, source);
        return p < 0 ? default : System.Runtime.InteropServices.MemoryMarshal.Read<T>(Slice(buf, p, System.Runtime.CompilerServices.Unsafe.SizeOf<T>(), source));
    }

    private static uint U32(ReadOnlySpan<byte> buf, int pos, string source) => BinaryPrimitives.ReadUInt32LittleEndian(Slice(buf, pos, 4, source));

    private static ReadOnlySpan<byte> Slice(ReadOnlySpan<byte> buf, long pos, int n, string source) =>
        pos >= 0 && pos + n <= buf.Length ? buf.Slice((int)pos, n) : throw Bad(source, $"a reference to bytes {pos}..{pos + n} lies outside the message");

    private static InvalidDataException Bad(string source, string what) => new($"{source}: not a valid Arrow IPC stream: its schema is corrupt ({what})");
}
