"""What the pipeline shows and logs: the console's part of a streamed child's output
(experiment.children.ConsoleFilter) and TensorBoard logs ([train] tensorboard)."""
import pytest

from labo_fairseq.experiment.children import ConsoleFilter

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
