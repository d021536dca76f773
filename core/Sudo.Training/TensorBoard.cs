// TensorBoard event files: TFRecord framing (u64 length, masked CRC32C of the length, payload, masked
// CRC32C of the payload) around tensorflow.Event protos (wall_time = 1, step = 2, file_version = 3,
// summary = 5 → Summary.value = 1 → {tag = 1, simple_value = 2}), written with Google.Protobuf.
using Google.Protobuf;

namespace Sudo.Training;

public static class Crc32C
{
    private static readonly uint[] Table = Build();

    private static uint[] Build()
    {
        var t = new uint[256];
        for (uint i = 0; i < 256; i++)
        {
            var c = i;
            for (var k = 0; k < 8; k++) c = (c & 1) != 0 ? 0x82F63B78u ^ (c >> 1) : c >> 1;
            t[i] = c;
        }
        return t;
    }

    /// <summary>CRC-32C (Castagnoli), as TFRecord uses: "123456789" → 0xE3069283.</summary>
    public static uint Compute(ReadOnlySpan<byte> data)
    {
        var c = 0xFFFFFFFFu;
        foreach (var b in data) c = Table[(c ^ b) & 0xFF] ^ (c >> 8);
        return ~c;
    }

    /// <summary>TFRecord's masked CRC: ((crc >> 15) | (crc << 17)) + 0xa282ead8.</summary>
    public static uint Masked(ReadOnlySpan<byte> data)
    {
        var c = Compute(data);
        return ((c >> 15) | (c << 17)) + 0xa282ead8u;
    }
}

public sealed class TensorBoardWriter : IDisposable
{
    private readonly FileStream _file;
    public string Path { get; }

    public TensorBoardWriter(string logDir)
    {
        Directory.CreateDirectory(logDir);
        var stamp = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        Path = System.IO.Path.Combine(logDir, $"events.out.tfevents.{stamp}.{Environment.MachineName}.{Environment.ProcessId}");
        _file = new FileStream(Path, FileMode.Create, FileAccess.Write, FileShare.Read);
        WriteEvent(Event(0, s => { s.WriteTag(3, WireFormat.WireType.LengthDelimited); s.WriteString("brain.Event:2"); }));
    }

    private static byte[] Event(long step, Action<CodedOutputStream> body)
    {
        using var ms = new MemoryStream();
        var s = new CodedOutputStream(ms);
        s.WriteTag(1, WireFormat.WireType.Fixed64);
        s.WriteDouble(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0);
        s.WriteTag(2, WireFormat.WireType.Varint);
        s.WriteInt64(step);
        body(s);
        s.Flush();
        return ms.ToArray();
    }

    private static byte[] Message(Action<CodedOutputStream> body)
    {
        using var ms = new MemoryStream();
        var s = new CodedOutputStream(ms);
        body(s);
        s.Flush();
        return ms.ToArray();
    }

    /// <summary>Scalars of one step, one Summary.Value per tag.</summary>
    public void AddScalars(long step, IReadOnlyDictionary<string, double> values)
    {
        var summary = Message(s =>
        {
            foreach (var (tag, v) in values)
            {
                if (!double.IsFinite(v)) continue;
                var value = Message(vs =>
                {
                    vs.WriteTag(1, WireFormat.WireType.LengthDelimited);
                    vs.WriteString(tag);
                    vs.WriteTag(2, WireFormat.WireType.Fixed32);
                    vs.WriteFloat((float)v);
                });
                s.WriteTag(1, WireFormat.WireType.LengthDelimited);
                s.WriteBytes(ByteString.CopyFrom(value));
            }
        });
        WriteEvent(Event(step, s =>
        {
            s.WriteTag(5, WireFormat.WireType.LengthDelimited);
            s.WriteBytes(ByteString.CopyFrom(summary));
        }));
    }

    private void WriteEvent(byte[] payload)
    {
        Span<byte> len = stackalloc byte[8];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)payload.Length);
        Span<byte> crc = stackalloc byte[4];
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(crc, Crc32C.Masked(len));
        _file.Write(len);
        _file.Write(crc);
        _file.Write(payload);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(crc, Crc32C.Masked(payload));
        _file.Write(crc);
        _file.Flush();
    }

    /// <summary>Reads back (tag, step, value) triples, checking the framing CRCs (for tests and tools).</summary>
    public static List<(string tag, long step, float value)> ReadScalars(string path)
    {
        var result = new List<(string, long, float)>();
        var data = File.ReadAllBytes(path);
        var pos = 0;
        while (pos < data.Length)
        {
            if (pos + 12 > data.Length) throw new InvalidDataException($"{path}: truncated record header at byte {pos}");
            var len = (int)System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(data.AsSpan(pos, 8));
            if (System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(pos + 8, 4)) != Crc32C.Masked(data.AsSpan(pos, 8)))
                throw new InvalidDataException($"{path}: bad length CRC at byte {pos}");
            var payload = data.AsSpan(pos + 12, len);
            if (System.Buffers.Binary.BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(pos + 12 + len, 4)) != Crc32C.Masked(payload))
                throw new InvalidDataException($"{path}: bad payload CRC at byte {pos}");
            var input = new CodedInputStream(payload.ToArray());
            long step = 0;
            var values = new List<(string, float)>();
            uint tag;
            while ((tag = input.ReadTag()) != 0)
            {
                switch (WireFormat.GetTagFieldNumber(tag))
                {
                    case 2: step = input.ReadInt64(); break;
                    case 5:
                        var summary = new CodedInputStream(input.ReadBytes().ToByteArray());
                        uint st;
                        while ((st = summary.ReadTag()) != 0)
                        {
                            var v = new CodedInputStream(summary.ReadBytes().ToByteArray());
                            string name = "";
                            float val = 0;
                            uint vt;
                            while ((vt = v.ReadTag()) != 0)
                            {
                                if (WireFormat.GetTagFieldNumber(vt) == 1) name = v.ReadString();
                                else if (WireFormat.GetTagFieldNumber(vt) == 2) val = v.ReadFloat();
                                else v.SkipLastField();
                            }
                            values.Add((name, val));
                        }
                        break;
                    default: input.SkipLastField(); break;
                }
            }
            foreach (var (n, v) in values) result.Add((n, step, v));
            pos += 12 + len + 4;
        }
        return result;
    }

    public void Dispose() => _file.Dispose();
}
