// Columnar shards read block by block: parquet files through ParquetSharp (Apache Arrow C++'s parquet reader, the
// code pyarrow runs) with one block per row group, and Arrow IPC stream files (the `datasets` cache and
// save_to_disk format, written by pa.RecordBatchStreamWriter) through Apache.Arrow over a memory map, one block per
// record batch. Only the requested columns of one block are materialised, so memory is bounded by the block size,
// not by the file or the dataset.
using System.Buffers;
using System.IO.MemoryMappedFiles;
using Apache.Arrow;
using Apache.Arrow.Ipc;
using Apache.Arrow.Types;
using ParquetSharp;

namespace Sudo.Data;

/// <summary>The column types a preference table uses, as `datasets` features name them.</summary>
public enum ColumnKind { Float64, Int64, String, Binary, Other }

/// <summary>One shard (a file) of a split: blocks of rows, read one block and a few columns at a time.
/// Instances are safe to use from several threads.</summary>
public abstract class TableShard : IDisposable
{
    /// <summary>The path as resolved (a Hub snapshot path, not its blob), shown in messages.</summary>
    public string Path { get; }
    /// <summary>The file name as it is shown in messages (what a user finds on disk).</summary>
    public string Name => System.IO.Path.GetFileName(Path);
    /// <summary>The file actually read (a link stub followed to its blob).</summary>
    protected string DataPath { get; }
    protected TableShard(string path)
    {
        Path = path;
        DataPath = DatasetResolver.FollowLinkStub(path);
    }

    public abstract int BlockCount { get; }
    public abstract long BlockRows(int block);
    public long Rows => Enumerable.Range(0, BlockCount).Sum(BlockRows);
    /// <summary>Column names with their kind and the type as the file states it (for messages).</summary>
    public abstract IReadOnlyDictionary<string, (ColumnKind kind, string type)> Columns { get; }

    /// <summary>Opens one block for reading several of its columns (the file is opened and positioned once).</summary>
    public abstract Block OpenBlock(int block);

    public double?[] ReadFloat64(int block, string column) { using var b = OpenBlock(block); return b.ReadFloat64(column); }
    public long?[] ReadInt64(int block, string column) { using var b = OpenBlock(block); return b.ReadInt64(column); }
    public string?[] ReadString(int block, string column) { using var b = OpenBlock(block); return b.ReadString(column); }
    public byte[]?[] ReadBinary(int block, string column) { using var b = OpenBlock(block); return b.ReadBinary(column); }

    /// <summary>One open block: its columns, each read in full.</summary>
    public abstract class Block : IDisposable
    {
        public abstract double?[] ReadFloat64(string column);
        public abstract long?[] ReadInt64(string column);
        public abstract string?[] ReadString(string column);
        public abstract byte[]?[] ReadBinary(string column);
        public abstract void Dispose();
    }
    /// <summary>The bytes the block's listed columns take in memory once read (an estimate from the file metadata).</summary>
    public abstract long BlockBytes(int block, IEnumerable<string> columns);

    public virtual void Dispose() { }

    public static TableShard Open(string path) =>
        path.EndsWith(".arrow", StringComparison.OrdinalIgnoreCase) ? new ArrowStreamShard(path) : new ParquetShard(path);

    protected InvalidDataException WrongType(string column, string found, ColumnKind expected) =>
        new($"{Name}: column '{column}' has type {found}, expected {KindName(expected)} (file {Path})");

    public static string KindName(ColumnKind k) => k switch
    {
        ColumnKind.Float64 => "float64 (parquet DOUBLE)",
        ColumnKind.Int64 => "int64 (parquet INT64)",
        ColumnKind.String => "string (parquet BYTE_ARRAY UTF8)",
        ColumnKind.Binary => "binary (parquet BYTE_ARRAY)",
        _ => "another type",
    };

    protected void Require(string column, ColumnKind kind)
    {
        if (!Columns.TryGetValue(column, out var c))
            throw new InvalidDataException($"{Name}: no column '{column}' (columns: {string.Join(", ", Columns.Keys)}; file {Path})");
        if (c.kind != kind) throw WrongType(column, c.type, kind);
    }
}

/// <summary>A parquet file; blocks are row groups. The footer is read once; each block read opens its own reader
/// (arrow's ReadableFile uses positional reads), so worker threads never share parser state.</summary>
public sealed class ParquetShard : TableShard
{
    private readonly long[] _rows;
    private readonly long[][] _columnBytes;
    private readonly Dictionary<string, (ColumnKind, string)> _columns = new();
    private readonly Dictionary<string, int> _index = new();
    private readonly HashSet<string> _required = new();

    public ParquetShard(string path) : base(path)
    {
        try
        {
            using var f = new ParquetFileReader(DataPath);
            var md = f.FileMetaData;
            var schema = md.Schema;
            for (var i = 0; i < schema.NumColumns; i++)
            {
                var c = schema.Column(i);
                var name = c.Path.ToDotString();
                _index[name] = i;
                // A required column (no definition levels: Spark, Polars and ParquetSharp write non-null columns so) is read
                // as double/long, not double?/long? (ParquetSharp's LogicalReader refuses the other).
                if (c.MaxDefinitionLevel == 0) _required.Add(name);
                LogicalType? logical;
                // ParquetSharp's LogicalType.Create throws ArgumentOutOfRangeException for a logical type it has no class
                // for (the footer's "Undefined", which a converted type Arrow cannot map gives): such a column is still a
                // column, of a type Sudo does not read (found by scripts/fuzz.sh parquet).
                try { logical = c.LogicalType; }
                catch (ArgumentOutOfRangeException) { logical = null; }
                // A repeated column (a list) is not a column Sudo reads; ParquetSharp refuses to read a repeated leaf outside a
                // LIST/MAP group with a plain System.Exception (found by scripts/fuzz.sh parquet).
                var repeated = c.MaxRepetitionLevel > 0;
                var kind = repeated ? ColumnKind.Other : (c.PhysicalType, logical) switch
                {
                    (PhysicalType.Double, _) => ColumnKind.Float64,
                    (PhysicalType.Int64, NoneLogicalType or IntLogicalType { BitWidth: 64 }) => ColumnKind.Int64,
                    (PhysicalType.ByteArray, StringLogicalType) => ColumnKind.String,
                    (PhysicalType.ByteArray, NoneLogicalType) => ColumnKind.Binary,
                    _ => ColumnKind.Other,
                };
                var type = logical is NoneLogicalType ? c.PhysicalType.ToString().ToUpperInvariant()
                    : logical is null ? $"{c.PhysicalType.ToString().ToUpperInvariant()} (a logical type ParquetSharp does not know)"
                    : $"{c.PhysicalType.ToString().ToUpperInvariant()} {logical}";
                if (c.PhysicalType == PhysicalType.ByteArray && logical is StringLogicalType) type = "string (BYTE_ARRAY UTF8)";
                if (repeated) type = $"repeated {type}";
                _columns[name] = (kind, type);
            }
            _rows = new long[md.NumRowGroups];
            _columnBytes = new long[md.NumRowGroups][];
            for (var g = 0; g < md.NumRowGroups; g++)
            {
                using var rg = f.RowGroup(g);
                _rows[g] = rg.MetaData.NumRows;
                if (_rows[g] < 0 || _rows[g] > MaxRowsPerGroup)
                    throw new InvalidDataException($"{Name}: row group {g} claims {_rows[g]} rows (at most {MaxRowsPerGroup} are read; corrupt footer?) (file {path})");
                _columnBytes[g] = new long[schema.NumColumns];
                for (var i = 0; i < schema.NumColumns; i++)
                    using (var cm = rg.MetaData.GetColumnChunkMetaData(i)) _columnBytes[g][i] = cm.TotalUncompressedSize;
            }
        }
        catch (Exception e) when (e is ParquetException or ArgumentException)
        {
            throw new InvalidDataException($"{Name}: not a valid parquet file (truncated or corrupt; a complete file ends with the magic bytes 'PAR1' after its footer): {FirstLine(e.Message)} (file {path})", e);
        }
    }

    internal static string FirstLine(string s) => s.Split('\n')[0].Trim();

    /// <summary>A row group is read whole, one array per column: a footer claiming more rows than this is refused rather
    /// than allocated (Pick-a-Pic's shards hold a few hundred rows per group).</summary>
    public const long MaxRowsPerGroup = 1 << 24;

    public override int BlockCount => _rows.Length;
    public override long BlockRows(int block) => _rows[block];
    public override IReadOnlyDictionary<string, (ColumnKind kind, string type)> Columns => _columns;

    public override long BlockBytes(int block, IEnumerable<string> columns) =>
        columns.Where(_index.ContainsKey).Sum(c => _columnBytes[block][_index[c]]);

    public override Block OpenBlock(int block)
    {
        try
        {
            return new ParquetBlock(this, block);
        }
        catch (ParquetException e)
        {
            throw new InvalidDataException($"{Name}: cannot open row group {block}: {FirstLine(e.Message)} (file {Path})", e);
        }
    }

    private sealed class ParquetBlock : Block
    {
        private readonly ParquetShard _shard;
        private readonly int _block;
        private readonly ParquetFileReader _file;
        private readonly RowGroupReader _rowGroup;

        public ParquetBlock(ParquetShard shard, int block)
        {
            (_shard, _block) = (shard, block);
            _file = new ParquetFileReader(shard.DataPath);
            _rowGroup = _file.RowGroup(block);
        }

        private T[] Read<T>(string column, ColumnKind kind)
        {
            _shard.Require(column, kind);
            try
            {
                using var col = _rowGroup.Column(_shard._index[column]);
                using var reader = col.LogicalReader<T>();
                return reader.ReadAll(checked((int)_shard._rows[_block]));
            }
            catch (Exception e) when (e is ParquetException or ArgumentException || e.GetType() == typeof(Exception))
            {
                // ArgumentException: ParquetSharp's ReadAll found fewer values than the row group's metadata promised;
                // a plain Exception: ParquetSharp's own schema checks when it builds a reader
                throw new InvalidDataException($"{_shard.Name}: cannot read column '{column}' of row group {_block}: {FirstLine(e.Message)} (file {_shard.Path})", e);
            }
        }

        private T?[] ReadValues<T>(string column, ColumnKind kind) where T : struct =>
            _shard._required.Contains(column) ? System.Array.ConvertAll(Read<T>(column, kind), v => (T?)v) : Read<T?>(column, kind);

        public override double?[] ReadFloat64(string column) => ReadValues<double>(column, ColumnKind.Float64);
        public override long?[] ReadInt64(string column) => ReadValues<long>(column, ColumnKind.Int64);
        public override string?[] ReadString(string column) => Read<string?>(column, ColumnKind.String);
        public override byte[]?[] ReadBinary(string column) => Read<byte[]?>(column, ColumnKind.Binary);

        public override void Dispose()
        {
            _rowGroup.Dispose();
            _file.Dispose();
        }
    }
}

/// <summary>An Arrow IPC stream file, memory-mapped: record batches are blocks and are read zero-copy (a block's
/// columns are copied out only when asked for). Files of 2 GiB and more are read through a file stream.</summary>
public sealed class ArrowStreamShard : TableShard
{
    private readonly MemoryMappedFile? _map;
    private readonly MemoryMappedViewAccessor? _view;
    private readonly MappedMemory? _memory;
    private readonly long[] _rows;
    private readonly long[][] _bytes;
    private readonly Dictionary<string, (ColumnKind, string)> _columns = new();
    private readonly Dictionary<string, int> _index = new();

    public unsafe ArrowStreamShard(string path) : base(path)
    {
        var length = new FileInfo(DataPath).Length;
        if (length == 0) throw new InvalidDataException($"{Name}: empty file, not an Arrow IPC stream (file {path})");
        if (length < int.MaxValue)
        {
            _map = MemoryMappedFile.CreateFromFile(DataPath, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            _view = _map.CreateViewAccessor(0, length, MemoryMappedFileAccess.Read);
            byte* p = null;
            _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            _memory = new MappedMemory(p + _view.PointerOffset, (int)length);
        }
        var rows = new List<long>();
        var bytes = new List<long[]>();
        try
        {
            CheckSchema(path);
            using var r = NewReader(out var stream);
            using (stream)
            {
                var schema = r.Schema;
                for (var i = 0; i < schema.FieldsList.Count; i++)
                {
                    var field = schema.FieldsList[i];
                    _index[field.Name] = i;
                    var kind = field.DataType.TypeId switch
                    {
                        ArrowTypeId.Double => ColumnKind.Float64,
                        ArrowTypeId.Int64 => ColumnKind.Int64,
                        ArrowTypeId.String or ArrowTypeId.LargeString => ColumnKind.String,
                        ArrowTypeId.Binary or ArrowTypeId.LargeBinary => ColumnKind.Binary,
                        _ => ColumnKind.Other,
                    };
                    _columns[field.Name] = (kind, field.DataType.Name);
                }
                while (r.ReadNextRecordBatch() is { } batch)
                    using (batch)
                    {
                        rows.Add(batch.Length);
                        bytes.Add(Enumerable.Range(0, batch.ColumnCount).Select(c => ArrayBytes(batch.Column(c))).ToArray());
                    }
            }
        }
        catch (Exception e)
        {
            // Every failure unmaps the file: a rejected stream once kept its mapping, and a process that opened
            // ~65,000 bad files died at the kernel's limit on mappings (scripts/fuzz.sh arrow).
            Dispose();
            if (e is InvalidDataException) throw;
            throw new InvalidDataException($"{Name}: not a valid Arrow IPC stream (truncated or corrupt): {ParquetShard.FirstLine(e.Message)} (file {path})", e);
        }
        _rows = rows.ToArray();
        _bytes = bytes.ToArray();
    }

    /// <summary>The schema message checked before Apache.Arrow recurses over it (ArrowSchemaCheck).</summary>
    private unsafe void CheckSchema(string path)
    {
        if (_memory != null)
        {
            ArrowSchemaCheck.Validate(_memory.Memory.Span, $"{Name} (file {path})");
            return;
        }
        using var fs = new FileStream(DataPath, FileMode.Open, FileAccess.Read, FileShare.Read);
        var head = new byte[8];
        fs.ReadAtLeast(head, 8, throwOnEndOfStream: false);
        var need = (int)Math.Min(ArrowSchemaCheck.PrefixBytes(head), Math.Min(fs.Length, 64 << 20));
        var prefix = new byte[need];
        fs.Position = 0;
        fs.ReadAtLeast(prefix, need, throwOnEndOfStream: false);
        ArrowSchemaCheck.Validate(prefix, $"{Name} (file {path})");
    }

    private static long ArrayBytes(IArrowArray a) => a.Data.Buffers.Sum(b => (long)b.Length);

    private ArrowStreamReader NewReader(out Stream? stream)
    {
        if (_memory != null)
        {
            stream = null;
            return new ArrowStreamReader(_memory.Memory);
        }
        stream = new FileStream(DataPath, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20);
        return new ArrowStreamReader(stream, leaveOpen: true);
    }

    public override int BlockCount => _rows.Length;
    public override long BlockRows(int block) => _rows[block];
    public override IReadOnlyDictionary<string, (ColumnKind kind, string type)> Columns => _columns;
    public override long BlockBytes(int block, IEnumerable<string> columns) => columns.Where(_index.ContainsKey).Sum(c => _bytes[block][_index[c]]);

    public override Block OpenBlock(int block)
    {
        try
        {
            return new ArrowBlock(this, block);
        }
        catch (Exception e) when (e is not InvalidDataException)
        {
            throw new InvalidDataException($"{Name}: cannot read record batch {block}: {ParquetShard.FirstLine(e.Message)} (file {Path})", e);
        }
    }

    private sealed class ArrowBlock : Block
    {
        private readonly ArrowStreamShard _shard;
        private readonly ArrowStreamReader _reader;
        private readonly Stream? _stream;
        private readonly RecordBatch _batch;

        public ArrowBlock(ArrowStreamShard shard, int block)
        {
            _shard = shard;
            _reader = shard.NewReader(out _stream);
            try
            {
                for (var b = 0; b < block; b++) _reader.ReadNextRecordBatch()?.Dispose();
                _batch = _reader.ReadNextRecordBatch() ?? throw new InvalidDataException($"{shard.Name}: record batch {block} is missing (file {shard.Path})");
            }
            catch
            {
                _reader.Dispose();
                _stream?.Dispose();
                throw;
            }
        }

        private T[] Read<T>(string column, ColumnKind kind, Func<IArrowArray, int, T> get)
        {
            _shard.Require(column, kind);
            var at = _shard._index[column];
            if (at >= _batch.ColumnCount)
                throw new InvalidDataException($"{_shard.Name}: record batch has {_batch.ColumnCount} columns, the schema names '{column}' as column {at + 1} (file {_shard.Path})");
            var a = _batch.Column(at);
            var fits = kind switch
            {
                ColumnKind.Float64 => a is DoubleArray,
                ColumnKind.Int64 => a is Int64Array,
                ColumnKind.String => a is StringArray or LargeStringArray,
                ColumnKind.Binary => a is BinaryArray or LargeBinaryArray,
                _ => false,
            };
            if (!fits || a.Length != _batch.Length)
                throw new InvalidDataException($"{_shard.Name}: column '{column}' of a record batch is {a.Data.DataType.Name} with {a.Length} rows, the schema says {_shard._columns[column].Item2} with {_batch.Length} (file {_shard.Path})");
            Validate(a, column);
            var result = new T[a.Length];
            for (var i = 0; i < a.Length; i++) result[i] = get(a, i);
            return result;
        }

        /// <summary>Apache.Arrow trusts a stream's buffers: an offset past its value buffer is read through a raw pointer
        /// (an access violation, not an exception). Every buffer a read touches is checked against the array's
        /// offset and length first (the Arrow columnar format's layout rules).</summary>
        private void Validate(IArrowArray a, string column)
        {
            var d = a.Data;
            string Bad(string what) => $"{_shard.Name}: column '{column}' of this record batch is corrupt: {what} (file {_shard.Path})";
            if (d.Offset < 0 || d.Length < 0) throw new InvalidDataException(Bad($"offset {d.Offset}, length {d.Length}"));
            var end = (long)d.Offset + d.Length;
            if (d.NullCount != 0 && d.Buffers.Length > 0 && !d.Buffers[0].IsEmpty && d.Buffers[0].Length < (end + 7) / 8)
                throw new InvalidDataException(Bad($"validity bitmap of {d.Buffers[0].Length} bytes for {end} rows"));
            switch (a)
            {
                case DoubleArray or Int64Array:
                    if (d.Buffers.Length < 2 || d.Buffers[1].Length < end * 8) throw new InvalidDataException(Bad($"value buffer too short for {end} rows"));
                    break;
                case StringArray or BinaryArray:
                    CheckOffsets(d, end, 4, Bad);
                    break;
                case LargeStringArray or LargeBinaryArray:
                    CheckOffsets(d, end, 8, Bad);
                    break;
            }
        }

        private static void CheckOffsets(ArrayData d, long end, int width, Func<string, string> bad)
        {
            if (d.Buffers.Length < 3) throw new InvalidDataException(bad("missing offset or value buffer"));
            var offsets = d.Buffers[1].Span;
            var values = d.Buffers[2].Length;
            if (offsets.Length < (end + 1) * width) throw new InvalidDataException(bad($"offset buffer of {offsets.Length} bytes for {end} rows"));
            long prev = -1;
            for (var i = d.Offset; i <= end; i++)
            {
                long o = width == 4
                    ? System.Buffers.Binary.BinaryPrimitives.ReadInt32LittleEndian(offsets[(int)(i * 4)..])
                    : System.Buffers.Binary.BinaryPrimitives.ReadInt64LittleEndian(offsets[(int)(i * 8)..]);
                if (o < 0 || o > values || o < prev) throw new InvalidDataException(bad($"value offset {o} at row {i} (value buffer {values} bytes, previous offset {prev})"));
                prev = o;
            }
        }

        public override double?[] ReadFloat64(string column) => Read(column, ColumnKind.Float64, (a, i) => ((DoubleArray)a).GetValue(i));
        public override long?[] ReadInt64(string column) => Read(column, ColumnKind.Int64, (a, i) => ((Int64Array)a).GetValue(i));
        public override string?[] ReadString(string column) => Read(column, ColumnKind.String, (a, i) => a switch
        {
            StringArray s => s.IsNull(i) ? null : s.GetString(i),
            LargeStringArray s => s.IsNull(i) ? null : s.GetString(i),
            _ => throw new InvalidDataException($"{_shard.Name}: column '{column}' is not a string array"),
        });
        public override byte[]?[] ReadBinary(string column) => Read(column, ColumnKind.Binary, (a, i) => a switch
        {
            BinaryArray s => s.IsNull(i) ? null : s.GetBytes(i).ToArray(),
            LargeBinaryArray s => s.IsNull(i) ? null : s.GetBytes(i).ToArray(),
            _ => throw new InvalidDataException($"{_shard.Name}: column '{column}' is not a binary array"),
        });

        public override void Dispose()
        {
            _batch.Dispose();
            _reader.Dispose();
            _stream?.Dispose();
        }
    }

    public override void Dispose()
    {
        if (_view != null)
        {
            _view.SafeMemoryMappedViewHandle.ReleasePointer();
            _view.Dispose();
        }
        _map?.Dispose();
    }

    /// <summary>A read-only window over mapped memory, so that Arrow reads record batches without copying.</summary>
    private sealed unsafe class MappedMemory(byte* pointer, int length) : MemoryManager<byte>
    {
        public override Span<byte> GetSpan() => new(pointer, length);
        public override MemoryHandle Pin(int elementIndex = 0) => new(pointer + elementIndex);
        public override void Unpin() { }
        protected override void Dispose(bool disposing) { }
    }
}
