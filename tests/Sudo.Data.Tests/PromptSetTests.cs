// The prompt reader against ../shared/prompts: every set of its manifest.json, read from the original upstream
// file(s), equals that set's normalised prompts.txt, line by line.
using System.Text.Json.Nodes;
using NUnit.Framework;
using Sudo.Data;
using Sudo.Torch.Tests;

namespace Sudo.Data.Tests;

public class PromptSetTests
{
    public static IEnumerable<TestCaseData> Sets()
    {
        var manifest = Path.Combine(Shared.Root, "prompts", "manifest.json");
        if (!File.Exists(manifest)) { yield return new TestCaseData("(prompts missing)").SetName("PromptSet_SharedMissing"); yield break; }
        foreach (var s in JsonNode.Parse(File.ReadAllText(manifest))!["sets"]!.AsArray())
            yield return new TestCaseData(s!["name"]!.GetValue<string>()).SetName("PromptSet_" + s["name"]!.GetValue<string>());
    }

    [TestCaseSource(nameof(Sets))]
    public void OriginalFilesReadAsTheirPromptsTxt(string name)
    {
        var root = Shared.Require("prompts");
        var set = JsonNode.Parse(File.ReadAllText(Path.Combine(root, "manifest.json")))!["sets"]!.AsArray().First(s => s!["name"]!.GetValue<string>() == name)!;
        var folder = Path.Combine(root, name);
        var expected = File.ReadAllLines(Path.Combine(folder, "prompts.txt")).ToList();
        Assert.That(expected.Count, Is.EqualTo(set["prompts_txt"]!["count"]!.GetValue<int>()), "prompts.txt vs manifest count");
        var files = set["files"]!.AsObject().Select(kv => kv.Key).ToList();
        var each = files.Select(f => PromptSets.Read(Path.Combine(folder, f))).ToList();
        // Several files are either parts of the set (concatenated in manifest order) or alternative forms of it.
        if (each.Sum(p => p.Count) == expected.Count) Assert.That(each.SelectMany(p => p), Is.EqualTo(expected), name);
        else
            for (var i = 0; i < files.Count; i++) Assert.That(each[i], Is.EqualTo(expected), $"{name}/{files[i]}");
    }

    [Test]
    public void PickapicCaptionsFromADatasetSplit()
    {
        var hub = Shared.Require("fixtures", "pickapic", "hub", "datasets--yuvalkirstain--pickapic_v2");
        var expected = File.ReadLines(Path.Combine(Shared.Root, "fixtures", "pickapic", "expected_other_splits.jsonl"))
            .Select(l => JsonNode.Parse(l)!).Where(e => e["split"]!.GetValue<string>() == "validation_unique").Select(e => PromptSets.Normalize(e["caption"]!.GetValue<string>())).ToList();
        // validation_unique has no ties, so its pairs are its rows.
        Assert.That(PromptSets.Read(hub, split: "validation_unique"), Is.EqualTo(expected));
    }
}
