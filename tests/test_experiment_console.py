"""What the pipeline shows and logs: the live status line on a terminal (experiment.console),
the console's part of a streamed child's output (experiment.children.ConsoleFilter) and
TensorBoard logs ([train] tensorboard)."""
import io
import re
import threading
import time

import pytest

from labo_fairseq.experiment.children import ConsoleFilter
from labo_fairseq.experiment.console import Console
from labo_fairseq.experiment.progress import ProgressReporter

LOG = """2026-12-03 18:51:19 | INFO | fairseq_cli.train | {'_name': None, 'common': {'_name': None}}
2026-12-03 18:51:19 | INFO | fairseq.tasks.translation | [tgt] dictionary: 88 types
2026-12-03 18:51:19 | INFO | fairseq_cli.train | TransformerModel(
  (encoder): TransformerEncoderBase(
  )
)
2026-12-03 18:51:19 | INFO | fairseq_cli.train | task: TranslationTask
Traceback (most recent call last):
  File "x.py", line 1, in <module>
ValueError: boom
2026-12-03 18:51:20 | INFO | fairseq_cli.generate | {'_name': None, 'common': {}}
2026-12-03 18:51:20 | INFO | train_inner | epoch 001:      5 / 8 loss=9.1, num_updates=5
"""


class Terminal(io.StringIO):
    def isatty(self):
        return True


ERASE = "\r\x1b[K"


def test_status_line_stays_below_the_lines_printed_on_a_terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    console = Console(Terminal())
    assert console.live
    console.status("progress: 1/2")
    console.write("[experiment] a line\n")
    console.status("progress: 2/2")
    console.clear_status()
    console.write("after\n")
    assert console.stream.getvalue() == ("progress: 1/2" + ERASE + "[experiment] a line\nprogress: 1/2"
                                         + ERASE + "progress: 2/2" + ERASE + "after\n")


def test_status_line_is_cut_to_the_terminal_width(monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setenv("COLUMNS", "20")
    console = Console(Terminal())
    console.status("x" * 50)
    assert console.stream.getvalue() == "x" * 18 + "…"


@pytest.mark.parametrize("stream, term", [(io.StringIO(), "xterm"), (Terminal(), "dumb")])
def test_no_status_line_in_a_log_or_a_dumb_terminal(monkeypatch, stream, term):
    monkeypatch.setenv("TERM", term)
    console = Console(stream)
    console.status("progress: 1/2")
    console.write("line\n")
    console.clear_status()
    assert not console.live and stream.getvalue() == "line\n"


class OneRunTraining:
    """A TrainingSource with one run training since `since`."""

    def __init__(self, run, since):
        self.run, self.since, self.stopping = run, since, threading.Event()

    def training_since(self):
        return [(self.run, self.since)]


def toy_runs(tmp_path):
    from labo_fairseq.experiment import load_recipe, plan_runs

    path = tmp_path / "r.toml"
    path.write_text('[data]\ndata_bin = "d"\ntrain_target = "t"\n[train]\nargs = ["--max-update", "40"]\n'
                    '[[methods]]\nkind = "ls"\n')
    recipe = load_recipe(path)
    runs = plan_runs(recipe, tmp_path / "exp")
    runs[0].run_dir.mkdir(parents=True)
    return recipe, runs


def test_progress_is_one_live_line_on_a_terminal_and_plain_lines_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("TERM", "xterm")
    recipe, runs = toy_runs(tmp_path)
    (runs[0].run_dir / "train.log").write_text("epoch 001:  5 / 8 loss=3.1, num_updates=12\n")
    source = OneRunTraining(runs[0], (time.time(), 0))
    terminal, log = Console(Terminal()), Console(io.StringIO())
    # a minute between plain lines: on a terminal the line is still rewritten every second
    with ProgressReporter(recipe, runs, source, 60, terminal):
        time.sleep(2.5)
    with ProgressReporter(recipe, runs, source, 0.2, log):
        time.sleep(1.0)
    screen = terminal.stream.getvalue()
    updates = re.findall(r"progress: 0/1 run\(s\) started, 0 finished; ls-a0\.1-seed1 update 12/40; \d+s elapsed",
                         screen)
    assert len(updates) >= 2 and screen.endswith(ERASE) and "[experiment]" not in screen, screen
    plain = log.stream.getvalue().splitlines()
    assert len(plain) >= 2 and all(re.fullmatch(r"\[experiment\] progress: 0/1 .* update 12/40; \d+s elapsed; training left about \S+",
                                                               line)
                                   for line in plain), plain


def reporter_10s_into_training(tmp_path, log_text):
    """A reporter of one run whose training started 10 s ago, when train.log held `log_text`;
    no run is left to start."""
    recipe, runs = toy_runs(tmp_path)
    log = runs[0].run_dir / "train.log"
    log.write_text(log_text)
    source = OneRunTraining(runs[0], (time.time() - 10, log.stat().st_size))
    reporter = ProgressReporter(recipe, runs, source, 0, Console(io.StringIO()))
    reporter.started_names.add(runs[0].name)
    return reporter, log


def test_progress_reads_only_what_train_log_gained_and_only_whole_lines(tmp_path):
    reporter, log = reporter_10s_into_training(tmp_path, "an earlier attempt: num_updates=30\n")
    # nothing new since the start: the last update the log names, no rate yet
    assert re.search(r"update 30/40; \d+s elapsed$", reporter.status())
    with open(log, "a") as f:
        f.write("Loaded checkpoint c/checkpoint_last.pt (epoch 1 @ 20 updates)\nnum_updates=25\nnum_upd")
    assert "update 25/40" in reporter.status()
    with open(log, "a") as f:
        f.write("ates=27\n")
    status = reporter.status()
    # 7 updates since the checkpoint at 20 in 10 s: 13 left take about 19 s
    assert re.search(r"update 27/40; \d+s elapsed; training left about 1[89]s", status), status


def test_progress_of_a_job_attached_to_counts_from_where_it_stood_and_follows_a_rewritten_log(tmp_path):
    # a job already training when the launcher first saw it running: its rate counts from update 30
    reporter, log = reporter_10s_into_training(
        tmp_path, "Loaded checkpoint c/checkpoint_last.pt (epoch 1 @ 10 updates)\nnum_updates=30\n")
    with open(log, "a") as f:
        f.write("num_updates=35\n")
    # 5 updates in 10 s: 5 left take about 10 s
    assert re.search(r"update 35/40; \d+s elapsed; training left about (9|10|11)s", reporter.status())
    # the run trained again from scratch (train.log rewritten, shorter than what was read)
    log.write_text("num_updates=2\n")
    assert re.search(r"update 2/40; ", reporter.status())


def shown(text, log_name="train.log"):
    console = ConsoleFilter(log_name)
    return "".join(line for line in map(console.shown, text.splitlines(keepends=True)) if line is not None)


def test_the_configuration_and_model_print_are_left_out_once_noted():
    out = shown(LOG)
    assert "{'_name'" not in out and "TransformerModel(" not in out and "(encoder)" not in out
    assert out.count("(fairseq's configuration and model print: in train.log; --verbose shows them)\n") == 1
    for kept in ("[tgt] dictionary: 88 types", "task: TranslationTask", "Traceback", '  File "x.py", line 1',
                 "ValueError: boom", "num_updates=5"):
        assert kept in out
    assert out.index("[tgt] dictionary") < out.index("task: TranslationTask") < out.index("num_updates=5")


def test_output_without_dumps_passes_unchanged():
    plain = "".join(line for line in LOG.splitlines(keepends=True)
                    if "{'_name'" not in line and "Model(" not in line and not line.startswith(("  (", ")")))
    assert shown(plain) == plain


def test_tensorboard_key_gives_each_run_its_log_directory_and_never_blocks_resuming(toy_data_bin, tmp_path):
    from labo_fairseq.experiment import RecipeError, compare_commands, load_recipe, plan_runs
    from labo_fairseq.experiment.runs import train_command
    from tests.test_experiment import write_recipe

    recipe_path = write_recipe(tmp_path / "r.toml", toy_data_bin, '[[methods]]\nkind = "ls"\n')
    text = recipe_path.read_text()
    plain = load_recipe(recipe_path)
    recipe_path.write_text(text.replace("[train]\n", "[train]\ntensorboard = true\n"))
    logged = load_recipe(recipe_path)
    run = plan_runs(logged, tmp_path / "out")[0]
    command = train_command(logged, run)
    assert command[command.index("--tensorboard-logdir") + 1] == str(tmp_path / "out" / run.name / "tb")
    assert "--tensorboard-logdir" not in train_command(plain, plan_runs(plain, tmp_path / "out")[0])
    assert compare_commands(train_command(plain, run), command) == (None, None, None)
    recipe_path.write_text(text.replace("[train]\n", "[train]\ntensorboard = \"yes\"\n"))
    with pytest.raises(RecipeError, match=r"\[train\] tensorboard must be true or false, got 'yes'"):
        load_recipe(recipe_path)
