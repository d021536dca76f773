// JSON from files Sudo did not write (configs, safetensors headers, indexes, vocabularies, pair and prompt files).
// System.Text.Json's JsonNode parses lazily: invalid UTF-8 inside a string, an escaped lone surrogate ("\ud800") or a
// duplicate key pass JsonNode.Parse and throw InvalidOperationException/ArgumentException later, wherever the value is
// first read. These helpers parse and then touch every key and string once, so every defect of the text surfaces here
// as one InvalidDataException naming the source; what they return can be read without further surprises.
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Sudo.Torch;

public static class JsonInput
{
    /// <summary>Parses <paramref name="text"/> completely; any defect is an InvalidDataException naming <paramref name="source"/>.</summary>
    public static JsonNode? Parse(string text, string source, int maxDepth = 64) =>
        Checked(() => JsonNode.Parse(text, documentOptions: new JsonDocumentOptions { MaxDepth = maxDepth }), source);

    /// <summary>Parses UTF-8 bytes completely (see <see cref="Parse(string, string, int)"/>).</summary>
    public static JsonNode? Parse(byte[] utf8, string source, int maxDepth = 64) =>
        Checked(() => JsonNode.Parse(utf8, documentOptions: new JsonDocumentOptions { MaxDepth = maxDepth }), source);

    /// <summary>A file that must hold one JSON object.</summary>
    public static JsonObject ReadObject(string path, int maxDepth = 64) =>
        Parse(File.ReadAllBytes(path), path, maxDepth) as JsonObject ?? throw new InvalidDataException($"{path}: expected a JSON object");

    private static JsonNode? Checked(Func<JsonNode?> parse, string source)
    {
        try
        {
            var root = parse();
            Touch(root);
            return root;
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{source}: not valid JSON: {e.Message}", e);
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or FormatException)
        {
            // invalid UTF-8 or a lone surrogate in a string (InvalidOperationException), a duplicate key (ArgumentException)
            throw new InvalidDataException($"{source}: not valid JSON: {e.Message}", e);
        }
    }

    private static void Touch(JsonNode? node)
    {
        switch (node)
        {
            case JsonObject o:
                foreach (var kv in o) Touch(kv.Value);
                break;
            case JsonArray a:
                foreach (var x in a) Touch(x);
                break;
            case JsonValue v when v.GetValueKind() == JsonValueKind.String:
                _ = v.GetValue<string>();
                break;
        }
    }
}
