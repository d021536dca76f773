// What a researcher checks before spending GPU hours on a dataset: the pair count a training run would use, rows
// dropped by reason, label balance, caption lengths, image sizes and decodability (on a sample), and a grid of a
// few winner | loser pairs. Captions and labels are read for every pair (their columns only); images for the sample.
using System.Text;
using Sudo.Torch;
using static Sudo.Torch.torch;

namespace Sudo.Data;

public sealed record InspectionReport(
    int pairs_kept, DataCounts counts, string source, long winner_jpg_0, long winner_jpg_1,
    IReadOnlyList<(string bin, long count)> caption_lengths, long empty_captions,
    int sampled_pairs, IReadOnlyList<(string size, int count)> image_sizes, IReadOnlyList<string> bad_images,
    IReadOnlyList<string> grid_captions, string? grid_path, long max_block_bytes)
{
    public string Format()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"pairs kept: {pairs_kept}");
        sb.AppendLine($"source: {source}");
        sb.AppendLine($"rows: {counts.rows}");
        foreach (var (reason, n) in counts.dropped) sb.AppendLine($"dropped: {n} {reason}");
        if (winner_jpg_0 + winner_jpg_1 > 0)
            sb.AppendLine($"label balance: winner jpg_0 {winner_jpg_0} ({100.0 * winner_jpg_0 / Math.Max(1, winner_jpg_0 + winner_jpg_1):F1}%), winner jpg_1 {winner_jpg_1}");
        sb.AppendLine($"caption length (characters): " + string.Join(", ", caption_lengths.Select(b => $"{b.bin}: {b.count}")) + $"; empty: {empty_captions}");
        sb.AppendLine($"image sizes (sample of {sampled_pairs} pairs): " + string.Join(", ", image_sizes.Select(s => $"{s.size} ×{s.count}")));
        sb.AppendLine($"images that do not decode (sample): {bad_images.Count}");
        foreach (var b in bad_images.Take(10)) sb.AppendLine($"  {b}");
        if (max_block_bytes > 0) sb.AppendLine($"largest block (row group / record batch), image and caption columns: {max_block_bytes / 1048576.0:F2} MB");
        if (grid_path != null)
        {
            sb.AppendLine($"grid: {grid_path} (rows: winner | loser)");
            for (var i = 0; i < grid_captions.Count; i++) sb.AppendLine($"  row {i + 1}: {grid_captions[i]}");
        }
        return sb.ToString();
    }
}

public static class DataInspection
{
    static readonly int[] LengthBins = [0, 20, 50, 100, 200, 400];

    /// <summary>Inspects <paramref name="data"/>: summaries of every pair, images of <paramref name="sample"/> pairs spread
    /// over the dataset, and a grid of the first <paramref name="gridPairs"/> sampled pairs written to
    /// <paramref name="gridPath"/> (null: no grid).</summary>
    public static InspectionReport Run(PreferenceData data, int sample = 64, int gridPairs = 4, string? gridPath = null, int gridSize = 192)
    {
        long w0 = 0, w1 = 0, empty = 0;
        var bins = new long[LengthBins.Length + 1];
        long maxBlock = 0;
        for (var b = 0; b < data.BlockCount; b++)
        {
            if (data.BlockLength(b) == 0) continue;
            maxBlock = Math.Max(maxBlock, data.BlockBytes(b));
            foreach (var (caption, wc) in data.ReadSummaries(b))
            {
                if (wc == "jpg_0") w0++; else if (wc == "jpg_1") w1++;
                if (caption.Length == 0) empty++;
                var k = 0;
                while (k < LengthBins.Length && caption.Length > LengthBins[k]) k++;
                bins[k]++;
            }
        }
        var labels = new List<(string, long)>();
        for (var k = 0; k <= LengthBins.Length; k++)
            labels.Add((k == 0 ? "0" : k == LengthBins.Length ? $">{LengthBins[^1]}" : $"{LengthBins[k - 1] + 1}-{LengthBins[k]}", bins[k]));
        // The sample: evenly spaced pairs.
        var n = Math.Min(sample, data.Count);
        var picks = Enumerable.Range(0, n).Select(i => (int)((long)i * data.Count / Math.Max(1, n))).Distinct().ToArray();
        var sizes = new Dictionary<string, int>();
        var bad = new List<string>();
        var gridRows = new List<(RgbImage w, RgbImage l, string caption)>();
        foreach (var grp in picks.GroupBy(data.BlockOf))
        {
            var records = data.ReadBlock(grp.Key);
            foreach (var i in grp)
            {
                var r = records[i - data.BlockStart(grp.Key)];
                RgbImage? Decode(EncodedImage? e, string role)
                {
                    if (e is null) { bad.Add($"{r.where}: {role} image is null"); return null; }
                    try
                    {
                        var img = e.Decode();
                        var key = $"{img.Width}×{img.Height}";
                        sizes[key] = sizes.GetValueOrDefault(key) + 1;
                        return img;
                    }
                    catch (InvalidDataException ex) { bad.Add(ex.Message); return null; }
                }
                var w = Decode(r.winner, "winner");
                var l = Decode(r.loser, "loser");
                if (w != null && l != null && gridRows.Count < gridPairs) gridRows.Add((w, l, r.caption));
            }
        }
        string? written = null;
        if (gridPath != null && gridRows.Count > 0)
        {
            using var scope = NewDisposeScope();
            Tensor Cell(RgbImage img) => Images.CenterCrop(Images.ResizeShorterSide(Images.ToTensor01(img), gridSize, nn.InterpolationMode.Bilinear), gridSize, gridSize);
            var cells = stack(gridRows.SelectMany(g => new[] { Cell(g.w), Cell(g.l) }).ToArray());
            ImageCodecs.Save(Images.Grid(cells, rows: gridRows.Count, cols: 2), gridPath);
            written = gridPath;
        }
        return new InspectionReport(data.Count, data.Counts, data.Source, w0, w1, labels, empty, picks.Length,
            sizes.OrderByDescending(kv => kv.Value).Select(kv => (kv.Key, kv.Value)).ToList(), bad,
            gridRows.Select(g => g.caption).ToList(), written, maxBlock);
    }
}
