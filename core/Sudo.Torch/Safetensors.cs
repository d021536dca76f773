using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Sudo.Torch;

/// <summary>One tensor's entry in a safetensors header.</summary>
public sealed record SafetensorsEntry(string Name, ScalarType DType, long[] Shape, long Begin, long End);

/// <summary>The safetensors format (huggingface/safetensors): 8-byte little-endian header length N, N bytes
/// of JSON {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, then the byte buffer.
/// Parsing is bounds-checked like the reference implementation: the header must fit the file, every
/// tensor's byte range must match its dtype and shape, and the ranges must tile the buffer exactly.</summary>
public static class safetensors
{
    /// <summary>Headers larger than this are refused (the reference limit is 100 MB).</summary>
    public const long MaxHeaderBytes = 100_000_000;

    private static readonly Dictionary<string, ScalarType> DTypeOf = new()
    {
        ["F64"] = ScalarType.Float64,
        ["F32"] = ScalarType.Float32,
        ["F16"] = ScalarType.Float16,
        ["BF16"] = ScalarType.BFloat16,
        ["I64"] = ScalarType.Int64,
        ["I32"] = ScalarType.Int32,
        ["I16"] = ScalarType.Int16,
        ["I8"] = ScalarType.Int8,
        ["U8"] = ScalarType.UInt8,
        ["BOOL"] = ScalarType.Bool,
    };

    private static string NameOf(ScalarType t) => DTypeOf.First(kv => kv.Value == t).Key;

    /// <summary>An open safetensors file: header parsed and checked, data memory-mapped (copy-on-write).</summary>
    public sealed class File : IDisposable
    {
        private IntPtr _map;
        private readonly Dictionary<string, SafetensorsEntry> _entries;
        public string Path { get; }
        public long DataStart { get; }
        public IReadOnlyDictionary<string, string> Metadata { get; }
        public IEnumerable<string> Keys => _entries.Keys;
        public IReadOnlyDictionary<string, SafetensorsEntry> Entries => _entries;

        internal unsafe File(string path)
        {
            Library.EnsureLoaded();
            Path = path;
            (_entries, Metadata, DataStart) = ReadHeader(path);
            long size;
            _map = Native.sudo_mmap_open(path, &size);
            if (_map == IntPtr.Zero) throw new IOException($"safetensors: {Native.LastError()}");
        }

        public bool Contains(string key) => _entries.ContainsKey(key);

        /// <summary>The tensor named <paramref name="key"/>: aliasing the mapping (IsMapped = true; safe to
        /// read, refused by optimizers) or, with copy, an independent tensor on <paramref name="device"/>.</summary>
        public unsafe Tensor get(string key, bool copy = false, Device? device = null, ScalarType? dtype = null)
        {
            if (_map == IntPtr.Zero) throw new ObjectDisposedException(nameof(File), $"safetensors file {Path} was closed");
            if (!_entries.TryGetValue(key, out var e))
                throw new KeyNotFoundException($"safetensors file {Path} has no tensor '{key}'");
            var offset = DataStart + e.Begin;
            Tensor mapped;
            fixed (long* s = e.Shape)
                mapped = Tensor.Wrap(Native.sudo_mmap_tensor(_map, offset, s, e.Shape.Length, (int)e.DType), $"safetensors.get('{key}')");
            mapped.IsMapped = true;
            var aligned = offset % e.DType.ElementSize() == 0;
            if (!copy && aligned && device is null && dtype is null) return mapped;
            using (mapped)
            {
                var r = mapped.to(device ?? Device.CPU, dtype ?? e.DType, copy: true);
                r.IsMapped = false;
                return r;
            }
        }

        public void Dispose()
        {
            var m = _map;
            _map = IntPtr.Zero;
            if (m != IntPtr.Zero) Native.sudo_mmap_close(m);
        }
    }

    /// <summary>Opens a file lazily (safetensors.safe_open); tensors are read on get().</summary>
    public static File safe_open(string path) => new(path);

    /// <summary>Reads and validates a header without mapping the data.</summary>
    public static (Dictionary<string, SafetensorsEntry> entries, Dictionary<string, string> metadata, long dataStart) ReadHeader(string path)
    {
        if (!System.IO.File.Exists(path)) throw new FileNotFoundException($"safetensors file not found: {path}", path);
        using var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        var fileLen = fs.Length;
        Span<byte> lenBytes = stackalloc byte[8];
        if (fileLen < 8 || fs.Read(lenBytes) != 8)
            throw new InvalidDataException($"{path}: not a safetensors file (only {fileLen} bytes; the 8-byte header length is missing)");
        var n = BinaryPrimitives.ReadUInt64LittleEndian(lenBytes);
        if (n > MaxHeaderBytes)
            throw new InvalidDataException($"{path}: safetensors header length {n} exceeds the {MaxHeaderBytes}-byte limit (corrupt or hostile file)");
        if ((long)n > fileLen - 8)
            throw new InvalidDataException($"{path}: safetensors header claims {n} bytes but the file has only {fileLen - 8} after the length (truncated?)");
        var header = new byte[n];
        fs.ReadExactly(header);
        var dataLen = fileLen - 8 - (long)n;
        return ParseHeader(path, header, dataLen, 8 + (long)n);
    }

    internal static (Dictionary<string, SafetensorsEntry>, Dictionary<string, string>, long) ParseHeader(string path, byte[] header, long dataLen, long dataStart)
    {
        var root = JsonInput.Parse(header, $"{path}: safetensors header", maxDepth: 8);
        if (root is not JsonObject obj) throw new InvalidDataException($"{path}: safetensors header must be a JSON object");
        var entries = new Dictionary<string, SafetensorsEntry>();
        var metadata = new Dictionary<string, string>();
        foreach (var (name, node) in obj)
        {
            if (name == "__metadata__")
            {
                if (node is not JsonObject meta) throw new InvalidDataException($"{path}: __metadata__ must be an object of strings");
                foreach (var (k, v) in meta)
                {
                    if (v is not JsonValue jv || !jv.TryGetValue<string>(out var str))
                        throw new InvalidDataException($"{path}: __metadata__['{k}'] must be a string");
                    metadata[k] = str;
                }
                continue;
            }
            entries[name] = ParseEntry(path, name, node, dataLen);
        }
        // The byte ranges must tile [0, dataLen) exactly: no overlap, no hole.
        long pos = 0;
        foreach (var e in entries.Values.OrderBy(e => e.Begin).ThenBy(e => e.End))
        {
            if (e.Begin != pos)
                throw new InvalidDataException($"{path}: tensor '{e.Name}' starts at byte {e.Begin}, expected {pos} (overlapping or missing data)");
            pos = e.End;
        }
        if (pos != dataLen)
            throw new InvalidDataException($"{path}: the tensors cover {pos} bytes but the data section has {dataLen} (truncated or trailing bytes)");
        return (entries, metadata, dataStart);
    }

    private static SafetensorsEntry ParseEntry(string path, string name, JsonNode? node, long dataLen)
    {
        string Where() => $"{path}: tensor '{name}'";
        if (node is not JsonObject o) throw new InvalidDataException($"{Where()}: entry must be an object with dtype, shape and data_offsets");
        if (o["dtype"] is not JsonValue dv || !dv.TryGetValue<string>(out var dts))
            throw new InvalidDataException($"{Where()}: missing dtype");
        if (!DTypeOf.TryGetValue(dts, out var dt))
            throw new InvalidDataException($"{Where()}: unsupported dtype '{dts}' (supported: {string.Join(", ", DTypeOf.Keys)})");
        if (o["shape"] is not JsonArray sa) throw new InvalidDataException($"{Where()}: missing shape");
        var shape = new long[sa.Count];
        long numel = 1;
        for (var i = 0; i < sa.Count; i++)
        {
            if (sa[i] is not JsonValue sv || !sv.TryGetValue<long>(out var d) || d < 0)
                throw new InvalidDataException($"{Where()}: shape entries must be non-negative integers");
            shape[i] = d;
            try
            {
                numel = checked(numel * d);
            }
            catch (OverflowException)
            {
                throw new InvalidDataException($"{Where()}: shape [{string.Join(", ", shape)}] overflows");
            }
        }
        if (o["data_offsets"] is not JsonArray oa || oa.Count != 2 ||
            oa[0] is not JsonValue bv || !bv.TryGetValue<long>(out var begin) ||
            oa[1] is not JsonValue ev || !ev.TryGetValue<long>(out var end))
            throw new InvalidDataException($"{Where()}: data_offsets must be [begin, end]");
        if (begin < 0 || end < begin || end > dataLen)
            throw new InvalidDataException($"{Where()}: data_offsets [{begin}, {end}] outside the {dataLen}-byte data section (truncated or corrupt file)");
        long nbytes;
        try
        {
            nbytes = checked(numel * dt.ElementSize());
        }
        catch (OverflowException)
        {
            throw new InvalidDataException($"{Where()}: byte size overflows");
        }
        if (end - begin != nbytes)
            throw new InvalidDataException($"{Where()}: {dts} [{string.Join(", ", shape)}] needs {nbytes} bytes but data_offsets give {end - begin}");
        return new SafetensorsEntry(name, dt, shape, begin, end);
    }

    /// <summary>Loads every tensor. With mmap (default) CPU tensors alias the file (read-only use; load
    /// them into a module with load_state_dict, which copies); otherwise independent copies.</summary>
    public static Dictionary<string, Tensor> load_file(string path, Device? device = null, bool mmap = true)
    {
        using var f = safe_open(path);
        var copy = !mmap || (device.HasValue && device.Value.Type != DeviceType.CPU);
        var d = new Dictionary<string, Tensor>();
        foreach (var k in f.Keys) d[k] = f.get(k, copy, copy ? device : null);
        return d;
    }

    public static IReadOnlyDictionary<string, string> load_metadata(string path) => ReadHeader(path).metadata;

    /// <summary>Writes tensors (keys sorted) to <paramref name="path"/> atomically: a temporary file in the
    /// same folder, flushed, then renamed over the target.</summary>
    public static void save_file(IReadOnlyDictionary<string, Tensor> tensors, string path, IReadOnlyDictionary<string, string>? metadata = null)
    {
        Library.EnsureLoaded();
        // Largest element size first, then by name (the reference writer's order): with the header padded
        // to 8 bytes, every tensor starts aligned to its element size, so readers can map it in place.
        var keys = tensors.OrderByDescending(kv => kv.Value.dtype.ElementSize()).ThenBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key).ToArray();
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var m = new JsonObject();
            foreach (var (k, v) in metadata) m[k] = v;
            header["__metadata__"] = m;
        }
        long offset = 0;
        var sizes = new long[keys.Length];
        for (var i = 0; i < keys.Length; i++)
        {
            var t = tensors[keys[i]];
            var dt = t.dtype;
            if (!DTypeOf.ContainsValue(dt)) throw new ArgumentException($"safetensors: tensor '{keys[i]}' has unsupported dtype {dt.TorchName()}");
            if (t.device.Type == DeviceType.Meta) throw new ArgumentException($"safetensors: tensor '{keys[i]}' is on the meta device and has no data to save");
            sizes[i] = t.numel() * dt.ElementSize();
            header[keys[i]] = new JsonObject
            {
                ["dtype"] = NameOf(dt),
                ["shape"] = new JsonArray(t.shape.Select(s => (JsonNode)s).ToArray()),
                ["data_offsets"] = new JsonArray(offset, offset + sizes[i]),
            };
            offset += sizes[i];
        }
        var json = Encoding.UTF8.GetBytes(header.ToJsonString());
        var padded = (json.Length + 7) / 8 * 8;
        var dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(path))!;
        Directory.CreateDirectory(dir);
        var tmp = System.IO.Path.Combine(dir, $".{System.IO.Path.GetFileName(path)}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            using (var fs = new FileStream(tmp, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 20))
            {
                Span<byte> len = stackalloc byte[8];
                BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)padded);
                fs.Write(len);
                fs.Write(json);
                for (var i = json.Length; i < padded; i++) fs.WriteByte((byte)' ');
                var buffer = Array.Empty<byte>();
                for (var i = 0; i < keys.Length; i++)
                {
                    if (sizes[i] == 0) continue;
                    if (sizes[i] > int.MaxValue) throw new NotSupportedException($"safetensors: tensor '{keys[i]}' exceeds 2 GiB");
                    if (buffer.Length < sizes[i]) buffer = new byte[sizes[i]];
                    WriteBytes(tensors[keys[i]], buffer.AsSpan(0, (int)sizes[i]));
                    fs.Write(buffer, 0, (int)sizes[i]);
                }
                fs.Flush(flushToDisk: true);
            }
            AtomicFile.MoveIntoPlace(tmp, path);
        }
        catch
        {
            try { System.IO.File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    private static unsafe void WriteBytes(Tensor t, Span<byte> dest)
    {
        fixed (byte* p = dest)
            Native.CheckStatus(Native.sudo_copy_to_host(t.Handle, p, dest.Length, (int)t.dtype), "safetensors.save_file");
    }

    /// <summary>Loads a sharded checkpoint through its *.safetensors.index.json (weight_map: key → shard file).</summary>
    public static Dictionary<string, Tensor> load_sharded(string indexPath, Device? device = null, bool mmap = true)
    {
        var root = JsonInput.ReadObject(indexPath);
        if (root["weight_map"] is not JsonObject map) throw new InvalidDataException($"{indexPath}: no weight_map object");
        var dir = System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(indexPath))!;
        // A value that is not a string (an object, a number, null) is a named error; the explicit (string?) conversion threw
        // InvalidOperationException on an object (found by scripts/fuzz.sh safetensors-index).
        var byFile = map.GroupBy(kv => kv.Value is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>()
            : throw new InvalidDataException($"{indexPath}: weight_map['{kv.Key}'] is not a file name (got a JSON {kv.Value?.GetValueKind().ToString().ToLowerInvariant() ?? "null"})"));
        var result = new Dictionary<string, Tensor>();
        try
        {
            foreach (var group in byFile)
            {
                if (group.Key.Contains('/') || group.Key.Contains('\\') || group.Key.StartsWith("..", StringComparison.Ordinal))
                    throw new InvalidDataException($"{indexPath}: shard name '{group.Key}' must be a file in the index's folder");
                var shard = System.IO.Path.Combine(dir, group.Key);
                using var f = safe_open(shard);
                foreach (var kv in group)
                {
                    if (!f.Contains(kv.Key)) throw new InvalidDataException($"{indexPath}: '{kv.Key}' is mapped to {group.Key}, which does not hold it");
                    var copy = !mmap || (device.HasValue && device.Value.Type != DeviceType.CPU);
                    result[kv.Key] = f.get(kv.Key, copy, copy ? device : null);
                }
            }
        }
        catch
        {
            foreach (var t in result.Values) t.Dispose();
            throw;
        }
        return result;
    }

    /// <summary>Writes shards of at most <paramref name="maxShardBytes"/> (a larger single tensor gets its own
    /// shard) named {baseName}-00001-of-0000N.safetensors plus {baseName}.safetensors.index.json, as
    /// transformers/diffusers' save_pretrained. A checkpoint that fits one shard is written unsharded.</summary>
    public static string save_sharded(IReadOnlyDictionary<string, Tensor> tensors, string dir, string baseName, long maxShardBytes,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        Directory.CreateDirectory(dir);
        var shards = new List<Dictionary<string, Tensor>> { new() };
        long cur = 0, total = 0;
        foreach (var k in tensors.Keys.OrderBy(k => k, StringComparer.Ordinal))
        {
            var t = tensors[k];
            var bytes = t.numel() * t.dtype.ElementSize();
            if (cur > 0 && cur + bytes > maxShardBytes)
            {
                shards.Add([]);
                cur = 0;
            }
            shards[^1][k] = t;
            cur += bytes;
            total += bytes;
        }
        if (shards.Count == 1)
        {
            var single = System.IO.Path.Combine(dir, baseName + ".safetensors");
            save_file(tensors, single, metadata);
            return single;
        }
        var weightMap = new JsonObject();
        for (var i = 0; i < shards.Count; i++)
        {
            var name = $"{baseName}-{i + 1:D5}-of-{shards.Count:D5}.safetensors";
            save_file(shards[i], System.IO.Path.Combine(dir, name), metadata);
            foreach (var k in shards[i].Keys) weightMap[k] = name;
        }
        var index = new JsonObject { ["metadata"] = new JsonObject { ["total_size"] = total }, ["weight_map"] = weightMap };
        var indexPath = System.IO.Path.Combine(dir, baseName + ".safetensors.index.json");
        AtomicFile.WriteAllText(indexPath, index.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return indexPath;
    }
}

/// <summary>Atomic and durable writes: a temporary file (or folder) next to the target is written, flushed to the disk
/// (fsync), renamed into place, and then the folder that holds the name is flushed. The rename makes the write atomic
/// against a killed process; the two flushes make it survive a crashed machine too (a rename is not durable by itself:
/// after a power loss ext4 or XFS can show the new name with no data, or the old name). This is what POSIX asks for
/// and what SQLite and git do; PyTorch's torch.save and safetensors' save_file do neither.</summary>
public static class AtomicFile
{
    public static void WriteAllText(string path, string text)
    {
        var full = System.IO.Path.GetFullPath(path);
        var dir = System.IO.Path.GetDirectoryName(full)!;
        Directory.CreateDirectory(dir);
        var tmp = System.IO.Path.Combine(dir, $".{System.IO.Path.GetFileName(full)}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}");
        try
        {
            System.IO.File.WriteAllText(tmp, text);
            MoveIntoPlace(tmp, full);
        }
        catch
        {
            try { System.IO.File.Delete(tmp); } catch (IOException) { }
            throw;
        }
    }

    /// <summary>Flushes the finished temporary file <paramref name="tmp"/>, renames it over <paramref name="final"/> (same
    /// folder) and flushes the folder.</summary>
    public static void MoveIntoPlace(string tmp, string final)
    {
        SyncFile(tmp);
        System.IO.File.Move(tmp, final, overwrite: true);
        SyncDirectory(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(final))!);
    }

    /// <summary>Publishes a finished temporary folder as <paramref name="final"/>: every file and folder below it is
    /// flushed first; an existing folder is renamed aside and deleted only after the new one is in place (and the parent
    /// folder flushed), so a crash never leaves neither.</summary>
    public static void PublishDirectory(string tmp, string final)
    {
        foreach (var f in Directory.EnumerateFiles(tmp, "*", SearchOption.AllDirectories)) SyncFile(f);
        foreach (var d in Directory.EnumerateDirectories(tmp, "*", SearchOption.AllDirectories)) SyncDirectory(d);
        SyncDirectory(tmp);
        string? aside = null;
        if (Directory.Exists(final))
        {
            aside = final.TrimEnd('/') + $".old-{Environment.ProcessId}-{Guid.NewGuid():N}";
            Directory.Move(final, aside);
        }
        Directory.Move(tmp, final);
        SyncDirectory(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(final).TrimEnd('/'))!);
        if (aside != null) Directory.Delete(aside, true);
    }

    /// <summary>fsync of one file's data and metadata.</summary>
    public static void SyncFile(string path)
    {
        using var fs = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite, 1);
        fs.Flush(flushToDisk: true);
    }

    /// <summary>fsync of a folder, so that the names created, renamed or removed in it are on the disk. A file system
    /// that cannot flush folders (EINVAL, ENOTSUP, EROFS) is left as it is; a failed write-back (EIO, ENOSPC, …) is an
    /// IOException. Windows has no such call (NTFS journals its names): nothing to do there.</summary>
    public static void SyncDirectory(string dir)
    {
        if (OperatingSystem.IsWindows()) return;
        var fd = open(dir, OperatingSystem.IsLinux() ? 0x80000 : 0);   // O_RDONLY | O_CLOEXEC (Linux's value)
        if (fd < 0)
        {
            var err = Marshal.GetLastPInvokeError();
            throw new IOException($"cannot open folder '{dir}' to flush it to the disk ({Marshal.GetPInvokeErrorMessage(err)})");
        }
        try
        {
            if (fsync(fd) != 0)
            {
                var err = Marshal.GetLastPInvokeError();
                // EINVAL 22, EROFS 30, and ENOTSUP/EOPNOTSUPP (95 on Linux, 45 on macOS)
                if (err is 22 or 30 or 95 or 45) return;
                throw new IOException($"flushing folder '{dir}' to the disk failed ({Marshal.GetPInvokeErrorMessage(err)})");
            }
        }
        finally
        {
            _ = close(fd);
        }
    }

    [DllImport("libc", SetLastError = true)]
    private static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);

    [DllImport("libc", SetLastError = true)]
    private static extern int fsync(int fd);

    [DllImport("libc", SetLastError = true)]
    private static extern int close(int fd);
}
