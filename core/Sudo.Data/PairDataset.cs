// Local preference-pair folders: images plus pairs.jsonl (or pairs.csv). Each record names a caption and
// either (winner, loser) or Pick-a-Pic's (image_0, image_1, label_0) with label_0 = 1 (image_0 wins), 0
// (image_1 wins) or 0.5 (tie: dropped, as Diffusion-DPO does).
using System.Globalization;
using System.Text.Json.Nodes;
using Sudo.Data;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Data;

public sealed record PreferencePair(string caption, string winner, string loser);

public sealed class PairDataset : PreferenceData
{
    public string Folder { get; }
    public IReadOnlyList<PreferencePair> Pairs { get; }
    public int DroppedTies { get; }

    private PairDataset(string folder, List<PreferencePair> pairs, int ties, DataCounts? counts = null)
    {
        Folder = folder;
        Pairs = pairs;
        DroppedTies = ties;
        _counts = counts ?? new DataCounts { rows = pairs.Count + ties };
        if (counts is null && ties > 0) _counts.Drop("ties (label_0 0.5)", ties);
        _counts.kept = pairs.Count;
    }

    private readonly DataCounts _counts;
    /// <summary>Records per block (each image is its own file: a block only batches file reads).</summary>
    public const int RecordsPerBlock = 16;
    public override string Source => $"pair folder {Folder}";
    public override int Count => Pairs.Count;
    public override int BlockCount => (Pairs.Count + RecordsPerBlock - 1) / RecordsPerBlock;
    public override int BlockStart(int block) => block * RecordsPerBlock;
    public override int BlockLength(int block) => Math.Min(RecordsPerBlock, Pairs.Count - block * RecordsPerBlock);
    public override DataCounts Counts => _counts;
    public override bool RandomAccess => true;

    public override PairRecord[] ReadBlock(int block)
    {
        var start = BlockStart(block);
        return Enumerable.Range(start, BlockLength(block)).Select(i =>
        {
            var p = Pairs[i];
            EncodedImage Image(string f) => new(File.ReadAllBytes(Path.Combine(Folder, f)), Path.Combine(Folder, f), f);
            return new PairRecord(i, i, p.caption, Image(p.winner), Image(p.loser), $"{Folder}, pair {i}");
        }).ToArray();
    }

    /// <param name="captionColumn">the field holding the caption (train.py's --caption_column, default caption).</param>
    public static PairDataset Load(string folder, string captionColumn = "caption")
    {
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"dataset folder '{folder}' not found: give a local folder with pairs.jsonl (caption, winner, loser) and the images; Sudo never downloads datasets");
        var jsonl = Path.Combine(folder, "pairs.jsonl");
        var csv = Path.Combine(folder, "pairs.csv");
        var rows = new List<Dictionary<string, string>>();
        if (File.Exists(jsonl))
        {
            var n = 0;
            foreach (var line in File.ReadLines(jsonl))
            {
                n++;
                if (string.IsNullOrWhiteSpace(line)) continue;
                var o = JsonInput.Parse(line, $"{jsonl}:{n}") as JsonObject ?? throw new InvalidDataException($"{jsonl}:{n}: not a JSON object");
                rows.Add(o.ToDictionary(kv => kv.Key, kv => kv.Value is JsonValue v ? v.ToString() : kv.Value?.ToJsonString() ?? ""));
            }
        }
        else if (File.Exists(csv))
        {
            var records = Delimited.Split(File.ReadAllText(csv), ',');
            if (records.Count == 0) throw new InvalidDataException($"{csv}: empty");
            var header = records[0].Select(h => h.Trim()).ToArray();
            if (header.GroupBy(h => h).FirstOrDefault(g => g.Count() > 1) is { } dup)
                throw new InvalidDataException($"{csv}: the header names column '{dup.Key}' more than once");
            foreach (var cells in records.Skip(1).Where(r => r.Any(c => c.Trim().Length > 0)))
            {
                if (cells.Count != header.Length) throw new InvalidDataException($"{csv}: row '{string.Join(",", cells)}' has {cells.Count} cells, header has {header.Length}");
                rows.Add(header.Zip(cells).ToDictionary(p => p.First, p => p.Second));
            }
        }
        else
        {
            throw new FileNotFoundException($"{folder}: no pairs.jsonl or pairs.csv (fields: caption, winner, loser — or caption, image_0, image_1, label_0)");
        }
        var pairs = new List<PreferencePair>();
        var ties = 0;
        foreach (var r in rows)
        {
            if (!r.TryGetValue(captionColumn, out var cap)) throw new InvalidDataException($"{folder}: a record has no '{captionColumn}' field (the caption column; fields: {string.Join(", ", r.Keys)})");
            string w, l;
            if (r.TryGetValue("winner", out var ww) && r.TryGetValue("loser", out var ll)) (w, l) = (ww, ll);
            else if (r.TryGetValue("image_0", out var i0) && r.TryGetValue("image_1", out var i1) && r.TryGetValue("label_0", out var lab))
            {
                if (!double.TryParse(lab, NumberStyles.Float, CultureInfo.InvariantCulture, out var label))
                    throw new InvalidDataException($"{folder}: label_0 must be 0, 0.5 or 1, got '{lab}'");
                if (label == 0.5) { ties++; continue; }
                (w, l) = label == 1 ? (i0, i1) : label == 0 ? (i1, i0) : throw new InvalidDataException($"{folder}: label_0 must be 0, 0.5 or 1, got {lab}");
            }
            else throw new InvalidDataException($"{folder}: a record needs winner/loser or image_0/image_1/label_0");
            foreach (var f in new[] { w, l })
                if (!InsideFolder(folder, f))
                    throw new InvalidDataException($"{folder}: image '{f}' named in the pairs file is not a relative path inside the folder");
                else if (!File.Exists(Path.Combine(folder, f))) throw new FileNotFoundException($"{folder}: image '{f}' named in the pairs file does not exist");
            pairs.Add(new PreferencePair(cap, w, l));
        }
        if (pairs.Count == 0) throw new InvalidDataException($"{folder}: no usable pairs ({ties} ties dropped)");
        return new PairDataset(folder, pairs, ties);
    }

    /// <summary>Whether <paramref name="name"/> is a relative path that stays inside <paramref name="folder"/> (a pair
    /// file from elsewhere cannot make Sudo read /etc/passwd or ../../secret.png as an image).</summary>
    private static bool InsideFolder(string folder, string name)
    {
        if (name.Length == 0 || name.Contains('\0') || Path.IsPathRooted(name)) return false;
        var root = Path.GetFullPath(folder).TrimEnd(Path.DirectorySeparatorChar) + Path.DirectorySeparatorChar;
        return Path.GetFullPath(Path.Combine(folder, name)).StartsWith(root, StringComparison.Ordinal);
    }

    /// <summary>AI-feedback relabelling (Diffusion-DPO's --choice_model): the image the scorer prefers
    /// becomes the winner; ties (equal scores) are dropped. Returns a new dataset over the same files.</summary>
    public PairDataset Relabeled(Func<string, string, double> score)
    {
        var pairs = new List<PreferencePair>();
        var ties = 0;
        foreach (var p in Pairs)
        {
            var sw = score(Path.Combine(Folder, p.winner), p.caption);
            var sl = score(Path.Combine(Folder, p.loser), p.caption);
            if (sw == sl) { ties++; continue; }
            pairs.Add(sw > sl ? p : p with { winner = p.loser, loser = p.winner });
        }
        return new PairDataset(Folder, pairs, DroppedTies + ties);
    }

    /// <summary>The <paramref name="n"/> records upstream's --max_train_samples keeps (dataset.shuffle(seed).select(range(n)),
    /// numpy's permutation), in dataset order; n larger than the dataset is an error, as upstream.</summary>
    public PairDataset Truncated(int n, long seed)
    {
        if (n > Pairs.Count) throw new ArgumentException($"--max_train_samples {n} exceeds the {Pairs.Count} pairs of {Folder}; upstream's select(range(N)) raises IndexError here");
        // numpy's default_rng(seed).permutation, as datasets' shuffle(seed) (kept in dataset order).
        var chosen = new HashSet<long>(NumpyRandom.Permutation(seed, Pairs.Count).Take(n));
        var keep = Pairs.Where((_, i) => chosen.Contains(i)).ToList();
        var counts = new DataCounts { rows = _counts.rows };
        foreach (var (k, v) in _counts.dropped) counts.Drop(k, v);
        counts.Drop("not selected (--max_train_samples)", Pairs.Count - n);
        return new PairDataset(Folder, keep, DroppedTies, counts);
    }

    /// <summary>Winner and loser as [2, 3, res, res] in [−1, 1] with the same resize (shorter side, bilinear),
    /// crop (random or center) and optional horizontal flip — Diffusion-DPO's train transforms.</summary>
    public Tensor LoadPair(int index, int resolution, bool randomCrop, bool hflip, Generator generator)
    {
        using var scope = NewDisposeScope();
        var p = Pairs[index];
        var imgs = new[] { p.winner, p.loser }.Select(f => Images.ToTensor(ImageCodecs.Load(Path.Combine(Folder, f)))).ToArray();
        var resized = imgs.Select(t => Images.ResizeShorterSide(t, resolution, nn.InterpolationMode.Bilinear)).ToArray();
        var h = resized.Min(t => t.size(1));
        var w = resized.Min(t => t.size(2));
        var both = stack(resized.Select(t => t.narrow(1, 0, h).narrow(2, 0, w)).ToArray());
        var cropped = randomCrop ? Images.RandomCrop(both, resolution, resolution, generator) : Images.CenterCrop(both, resolution, resolution);
        var flip = hflip && rand([1], generator).item() < 0.5;
        return scope.MoveToOuter(flip ? Images.HorizontalFlip(cropped) : cropped.alias());
    }
}
