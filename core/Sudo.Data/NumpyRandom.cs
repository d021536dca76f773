// numpy's np.random.default_rng(seed).permutation(n), bit for bit, so that --max_train_samples picks the same
// subset as upstream's dataset.shuffle(seed=seed).select(range(N)) (datasets calls
// np.random.default_rng(seed).permutation(len(dataset))). Sources: numpy/random/bit_generator.pyx (SeedSequence:
// hashmix/mix constants, pool size 4, generate_state), numpy/random/_pcg64.pyx + src/pcg64/pcg64.h (PCG64 XSL-RR
// 128/64, set_seed from generate_state(4, uint64), 32-bit draws from a buffered 64-bit draw, low half first),
// numpy/random/_generator.pyx (_shuffle_raw: Fisher–Yates from the end) and distributions.c (random_interval:
// masked rejection sampling with 32-bit draws when max ≤ 0xffffffff).
using System.Numerics;

namespace Sudo.Data;

public static class NumpyRandom
{
    /// <summary>np.random.default_rng(seed).permutation(n).</summary>
    public static long[] Permutation(long seed, int n)
    {
        var g = new Pcg64(seed);
        var a = new long[n];
        for (var i = 0; i < n; i++) a[i] = i;
        for (var i = n - 1; i >= 1; i--)
        {
            var j = (long)g.Interval((ulong)i);
            (a[i], a[j]) = (a[j], a[i]);
        }
        return a;
    }

    /// <summary>np.random.default_rng(seed).random(n): doubles in [0, 1) from 53 bits of each 64-bit draw.</summary>
    public static double[] Random(long seed, int n)
    {
        var g = new Pcg64(seed);
        return Enumerable.Range(0, n).Select(_ => (g.Next64() >> 11) * (1.0 / (1UL << 53))).ToArray();
    }

    /// <summary>numpy's SeedSequence(entropy).generate_state(words) as uint32 words.</summary>
    public static uint[] SeedSequence(ulong entropy, int words)
    {
        const uint InitA = 0x43b0d7e5, MultA = 0x931e8875, InitB = 0x8b51f9dd, MultB = 0x58f38ded;
        const uint MixL = 0xca01f9dd, MixR = 0x4973f715;
        const int XShift = 16, Pool = 4;
        // _coerce_to_uint32_array: the integer as little-endian 32-bit words (0 → [0]).
        var ent = new List<uint>();
        var v = entropy;
        do { ent.Add((uint)v); v >>= 32; } while (v != 0);
        var hashConst = InitA;
        uint HashMix(uint value)
        {
            value ^= hashConst;
            hashConst *= MultA;
            value *= hashConst;
            value ^= value >> XShift;
            return value;
        }
        static uint Mix(uint x, uint y)
        {
            var r = MixL * x - MixR * y;
            return r ^ (r >> XShift);
        }
        var pool = new uint[Pool];
        for (var i = 0; i < Pool; i++) pool[i] = HashMix(i < ent.Count ? ent[i] : 0);
        for (var s = 0; s < Pool; s++)
            for (var d = 0; d < Pool; d++)
                if (s != d) pool[d] = Mix(pool[d], HashMix(pool[s]));
        for (var s = Pool; s < ent.Count; s++)
            for (var d = 0; d < Pool; d++)
                pool[d] = Mix(pool[d], HashMix(ent[s]));
        var state = new uint[words];
        var hb = InitB;
        for (var i = 0; i < words; i++)
        {
            var x = pool[i % Pool];
            x ^= hb;
            hb *= MultB;
            x *= hb;
            x ^= x >> XShift;
            state[i] = x;
        }
        return state;
    }

    private sealed class Pcg64
    {
        private static readonly UInt128 Mult = new(0x2360ED051FC65DA4UL, 0x4385DF649FCCF645UL);
        private UInt128 _state, _inc;
        private bool _hasHalf;
        private uint _half;

        public Pcg64(long seed)
        {
            if (seed < 0) throw new ArgumentOutOfRangeException(nameof(seed), "numpy seeds are non-negative");
            var w = SeedSequence((ulong)seed, 8);
            ulong U64(int k) => w[2 * k] | ((ulong)w[2 * k + 1] << 32);
            // pcg64_set_seed(state, seed = val[0..1], inc = val[2..3]): 128-bit values high word first.
            var initState = new UInt128(U64(0), U64(1));
            var initSeq = new UInt128(U64(2), U64(3));
            _state = 0;
            _inc = (initSeq << 1) | 1;
            Step();
            _state += initState;
            Step();
        }

        private void Step() => _state = _state * Mult + _inc;

        public ulong Next64()
        {
            Step();
            var hi = (ulong)(_state >> 64);
            var lo = (ulong)_state;
            return BitOperations.RotateRight(hi ^ lo, (int)(hi >> 58));
        }

        public uint Next32()
        {
            if (_hasHalf) { _hasHalf = false; return _half; }
            var n = Next64();
            _hasHalf = true;
            _half = (uint)(n >> 32);
            return (uint)n;
        }

        /// <summary>Uniform on [0, max] by masked rejection (numpy random_interval).</summary>
        public ulong Interval(ulong max)
        {
            if (max == 0) return 0;
            var mask = max;
            mask |= mask >> 1; mask |= mask >> 2; mask |= mask >> 4; mask |= mask >> 8; mask |= mask >> 16; mask |= mask >> 32;
            ulong value;
            if (max <= 0xffffffffUL) while ((value = Next32() & mask) > max) { }
            else while ((value = Next64() & mask) > max) { }
            return value;
        }
    }
}
