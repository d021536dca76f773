using Sudo.Data;
namespace Sudo.Training.Tests;

/// <summary>A small pair folder for trainer tests: n pairs of noisy flat images (winner brighter than loser) and
/// pairs.jsonl with caption, winner, loser; the same seed gives the same bytes.</summary>
static class TestPairs
{
    public static void Write(string folder, int n, int width, int height, int seed, int noise, int winner, int loser, Func<int, string> caption)
    {
        Directory.CreateDirectory(folder);
        var rng = new Random(seed);
        var lines = new List<string>();
        for (var i = 0; i < n; i++)
        {
            RgbImage Img(int v) => new(width, height, Enumerable.Range(0, width * height * 3).Select(_ => (byte)Math.Clamp(v + rng.Next(-noise, noise), 0, 255)).ToArray());
            ImageCodecs.Save(Img(winner), Path.Combine(folder, $"w{i}.png"));
            ImageCodecs.Save(Img(loser), Path.Combine(folder, $"l{i}.png"));
            lines.Add($$"""{"caption": "{{caption(i)}}", "winner": "w{{i}}.png", "loser": "l{{i}}.png"}""");
        }
        File.WriteAllLines(Path.Combine(folder, "pairs.jsonl"), lines);
    }
}
