// Intervals over training seeds for the study's tables and figures (Student t from MathNet.Numerics).
namespace Sudo.Worlds.Shapes;

/// <summary>Statistics of the study (intervals over training seeds).</summary>
public static class Statistics
{
    /// <summary>Two-sided 95% quantile of Student's t with df degrees of freedom (MathNet.Numerics).</summary>
    public static double StudentT975(int df) => MathNet.Numerics.Distributions.StudentT.InvCDF(0, 1, df, 0.975);

    /// <summary>Mean and 95% half-width: Student t over the values (training seeds); NaN half-width for one value.</summary>
    public static (double mean, double half) MeanCi(IReadOnlyList<double> v)
    {
        var mean = v.Average();
        if (v.Count < 2) return (mean, double.NaN);
        var sd = Math.Sqrt(v.Sum(x => (x - mean) * (x - mean)) / (v.Count - 1));
        return (mean, StudentT975(v.Count - 1) * sd / Math.Sqrt(v.Count));
    }
}
