"""Print InternVL's `dynamic_preprocess` candidate (cols, rows) order for tile configs.

The authors build the candidates as `sorted(set(...), key=lambda r: r[0] * r[1])`: `sorted` is stable,
so within one product the order is CPython's set iteration order. medprm's `image::tile` reproduces that
order by emulating CPython's set table; its unit test compares against the file this script writes:

    python scripts/golden/print_tile_ratios.py > tests/data/images/tile_ratios.txt

One line per (min_num, max_num), 1 <= min_num <= max_num <= 16: `min max i,j i,j ...`.
"""
import sys


def candidates(min_num, max_num):
    # Same expression as InternVL's dynamic_preprocess (internvl_chat/internvl/train/dataset.py).
    target_ratios = set(
        (i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
        if i * j <= max_num and i * j >= min_num)
    return sorted(target_ratios, key=lambda x: x[0] * x[1])


def main():
    print(f"# CPython {sys.version.split()[0]}")
    for hi in range(1, 17):
        for lo in range(1, hi + 1):
            pairs = " ".join(f"{i},{j}" for i, j in candidates(lo, hi))
            print(f"{lo} {hi} {pairs}")


if __name__ == "__main__":
    main()
