"""`python -m labo_fairseq.cli [--prog NAME] COMMAND [ARGS...]`: what the scripts of a source
checkout run (--prog keeps their own name in usage and error messages)."""
import sys

from labo_fairseq.cli import COMMANDS


def _main(argv):
    prog = None
    if argv[:1] == ["--prog"] and len(argv) >= 2:
        prog, argv = argv[1], argv[2:]
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m labo_fairseq.cli [--prog NAME] {{{','.join(COMMANDS)}}} [ARGS...]", file=sys.stderr)
        return 2
    command = COMMANDS[argv[0]]
    return command(argv[1:], prog=prog) if prog else command(argv[1:])


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
