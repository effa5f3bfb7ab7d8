"""`ssast-pretrain`: placeholder until the pretrain module lands."""

import sys


def main() -> int:
    print("ssast-pretrain is not built yet; see the project's open issues.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
