// Delimited text (CSV, TSV) split as Python's csv module splits it with its default dialect (Modules/_csv.c):
// a field that starts with a quote is quoted — separators, newlines and doubled quotes inside — and text after its
// closing quote is appended (strict=False). Used by the prompt-set reader and by pair folders' pairs.csv.
namespace Sudo.Data;

public static class Delimited
{
    /// <summary>Records of delimited text as Python's csv.reader splits them (default dialect, strict=False).</summary>
    public static List<List<string>> Split(string text, char delimiter)
    {
        var rows = new List<List<string>>();
        var row = new List<string>();
        var field = new System.Text.StringBuilder();
        var state = 0;   // 0 start of field, 1 in field, 2 in quoted field, 3 quote inside a quoted field
        void EndField() { row.Add(field.ToString()); field.Clear(); state = 0; }
        void EndRow() { if (row.Count > 0 || field.Length > 0 || state != 0) EndField(); rows.Add(row); row = []; state = 0; }
        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            var newline = c is '\n' or '\r';
            if (newline && c == '\r' && i + 1 < text.Length && text[i + 1] == '\n' && state != 2) i++;
            switch (state)
            {
                case 0:
                    if (c == '"') state = 2;
                    else if (c == delimiter) EndField();
                    else if (newline) { if (row.Count == 0) { rows.Add([]); row = []; } else EndRow(); }
                    else { field.Append(c); state = 1; }
                    break;
                case 1:
                    if (c == delimiter) EndField();
                    else if (newline) EndRow();
                    else field.Append(c);
                    break;
                case 2:
                    if (c == '"') state = 3; else field.Append(c);
                    break;
                default:
                    if (c == '"') { field.Append('"'); state = 2; }
                    else if (c == delimiter) EndField();
                    else if (newline) EndRow();
                    else { field.Append(c); state = 1; }
                    break;
            }
        }
        if (state != 0 || row.Count > 0 || field.Length > 0) EndRow();
        return rows;
    }
}
