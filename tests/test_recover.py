"""`lpld recover`: the synthesis loop, its K-classes-per-step equality, resume, output, errors."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torchvision.datasets import ImageFolder
from typer.testing import CliRunner

from lpld_cli.cli import app
from lpld_cli.data.datasets import load_dataset
from lpld_cli.data.presets import get_preset
from lpld_cli.models.bn_stats import ClassStats, class_bn_stats
from lpld_cli.models.factory import ConvNet
from lpld_cli.models.teacher import Teacher, load_teacher
from lpld_cli.recover import (
    RecoverConfig,
    bn_targets,
    bn_terms,
    class_unit,
    mixed_unit,
    recover,
    synthesize,
)
from lpld_cli.storage.images import load_image_set
from lpld_cli.storage.store import Store
from tests.conftest import needs_fmnist

CPU = torch.device("cpu")
PRESET = get_preset("fashion-mnist")


def _config(**kw) -> RecoverConfig:
    return RecoverConfig(**{"ipc": 3, "iterations": 4, **kw}).resolved(PRESET, "fashion-mnist")


@pytest.fixture(scope="module")
def teacher(teacher_store: Store) -> Teacher:
    return load_teacher(teacher_store.newest("teacher"))


# ------------------------------------------------------------------ the synthesis loop
def test_all_classes_per_step_equals_one_class_per_step(teacher: Teacher) -> None:
    config = _config(ipc=2, iterations=4)
    units = [class_unit(teacher, c, 2, "class") for c in range(10)]
    together = synthesize(teacher, config, units, CPU)
    alone = torch.cat([synthesize(teacher, config, [u], CPU) for u in units])
    assert together.shape == (20, 1, 28, 28)
    assert (together - alone).abs().max() <= 1e-4
    # and the images really moved away from their noise start (4 steps at lr 0.1)
    start = synthesize(teacher, replace(config, lr=1e-12), units[:1], CPU)
    assert (alone[:2] - start).abs().mean() > 0.05


def test_mixed_batches_stacked_equal_one_per_step(teacher: Teacher) -> None:
    config = _config(ipc=2, method="sre2l", iterations=5)
    group = list(range(10))
    units = [mixed_unit(teacher, group, k, "global") for k in range(2)]
    together = synthesize(teacher, config, units, CPU)
    alone = torch.cat([synthesize(teacher, config, [u], CPU) for u in units])
    assert (together - alone).abs().max() <= 1e-4
    # a unit's stream depends on its key only: the two mixed batches differ
    assert (alone[:10] - alone[10:]).abs().mean() > 0.1


def test_bn_terms_match_batchnorm_batch_statistics() -> None:
    """Oracle: a train-mode BatchNorm2d with momentum 1 stores each unit's batch mean and
    unbiased variance; the terms are the L2 distances of those (biased) to the target."""
    torch.manual_seed(0)
    k, n, c, h = 3, 4, 5, 6
    inp = torch.randn(k * n, c, h, h) * 2 + 1
    t_mean, t_var = torch.randn(k, c), torch.rand(k, c) + 0.5
    means, variances = bn_terms([(0, inp)], k, [t_mean], [t_var])
    count = n * h * h
    for u in range(k):
        bn = torch.nn.BatchNorm2d(c, momentum=1.0).train()
        bn(inp[u * n:(u + 1) * n])
        biased = bn.running_var * (count - 1) / count
        want_mean = float(((bn.running_mean - t_mean[u]) ** 2).sum().sqrt())
        want_var = float(((biased - t_var[u]) ** 2).sum().sqrt())
        assert abs(float(means[0][u]) - want_mean) < 1e-4
        assert abs(float(variances[0][u]) - want_var) < 1e-4


def test_terms_hook_reconstructs_the_objective_and_changes_nothing(teacher: Teacher) -> None:
    config = _config(ipc=2, iterations=3, r_bn=0.3)
    units = [class_unit(teacher, c, 2, "class") for c in range(3)]
    losses, seen = [], []

    def on_terms(it, images, ce, means, variances):
        assert images.shape == (6, 1, 28, 28) and ce.shape == (3,)
        w = [config.first_bn_multiplier] + [1.0] * (len(means) - 1)
        bn = sum(wi * (m + v) for wi, m, v in zip(w, means, variances, strict=True))
        seen.append(float((ce + config.r_bn * bn).sum()) / 3)

    hooked = synthesize(teacher, config, units, CPU, lambda it, loss: losses.append(loss),
                        on_terms)
    plain = synthesize(teacher, config, units, CPU)
    assert torch.equal(hooked, plain)
    assert len(seen) == 3 and all(abs(a - b) < 1e-4 * max(1, abs(b))
                                  for a, b in zip(seen, losses, strict=True))


def test_class_target_uses_class_statistics(teacher: Teacher) -> None:
    """Perturb class 3's statistics: only class 3 changes, and only with --bn-target class."""
    config = _config(ipc=2, iterations=3, r_bn=1.0)
    shifted = {name: ClassStats(s.mean.clone(), s.var.clone(), s.count)
               for name, s in teacher.class_stats.items()}
    for stats in shifted.values():
        stats.mean[3] += 0.5
        stats.var[3] *= 2.0
    other = replace(teacher, class_stats=shifted)
    for target, changes in (("class", True), ("global", False)):
        for c in (3, 4):
            a = synthesize(teacher, config, [class_unit(teacher, c, 2, target)], CPU)
            b = synthesize(other, config, [class_unit(other, c, 2, target)], CPU)
            moved = (a - b).abs().max().item()
            if changes and c == 3:
                assert moved > 1e-3, (target, c)
            else:
                assert moved == 0.0, (target, c)


def test_mixture_target_equals_pooled_statistics() -> None:
    """A mixed unit's class target is the statistics of its classes pooled (equal counts)."""
    torch.manual_seed(0)
    model = ConvNet(3, 1, 12, width=4, depth=2).eval()
    x = torch.randn(40, 1, 12, 12)
    x[20:] = x[20:] * 2 + 1  # two classes with different statistics
    y = torch.tensor([0] * 20 + [1] * 20)
    split = class_bn_stats(model, [(x, y)], 3)
    pooled = class_bn_stats(model, [(x, torch.zeros_like(y))], 3)
    fake = Teacher(model, {"num_classes": 3}, {}, split, "x")
    means, variances = bn_targets(fake, [0, 1], "class")
    for i, name in enumerate(split):
        assert torch.allclose(means[i], pooled[name].mean[0], atol=1e-5)
        assert torch.allclose(variances[i], pooled[name].var[0], atol=1e-4)
    assert not torch.allclose(split["features.1"].mean[0], split["features.1"].mean[1])


def test_config_defaults_and_identity() -> None:
    lpld = RecoverConfig(ipc=10).resolved(PRESET, "fashion-mnist")
    assert (lpld.batching, lpld.bn_target, lpld.crop_schedule) == ("class", "class", "fixed")
    assert lpld.iterations == PRESET.recover_iterations and lpld.r_bn == PRESET.r_bn
    cda = RecoverConfig(method="cda").resolved(PRESET, "fashion-mnist")
    assert (cda.batching, cda.bn_target, cda.crop_schedule) == ("mixed", "global", "cosine")
    # Table 4 row 2: class batching with the global target
    row2 = RecoverConfig(method="sre2l", batching="class").resolved(PRESET, "fashion-mnist")
    assert (row2.batching, row2.bn_target) == ("class", "global")
    # the units per forward name the artifact: the forward's shape can change the last bits
    fast = replace(lpld, classes_per_step=10)
    assert fast.identity() != lpld.identity() and fast.identity()["classes_per_step"] == 10
    real = RecoverConfig(method="real", lr=5.0).resolved(PRESET, "fashion-mnist")
    assert real.lr is None and real.iterations is None


# ---------------------------------------------------------------------------- recover()
@needs_fmnist
def test_recover_writes_an_imagefolder_and_caches(store_with_teacher: Store) -> None:
    store = store_with_teacher
    teacher = store.newest("teacher")
    config = RecoverConfig(ipc=2, iterations=3, classes_per_step=4)
    art = recover(store, config, teacher)
    assert art.kind == "images" and art.parents == [teacher.id] and not art.cached
    # selectors carry the key recover configuration (issue 17: unambiguous parents)
    assert art.selectors == {"dataset": "fashion-mnist", "ipc": 2, "method": "lpld",
                             "teacher": teacher.id, "batching": "class", "bn_target": "class",
                             "iterations": 3, "r_bn": 0.05, "seed": 0}
    m = art.metrics
    assert (m["images"], m["classes"], m["classes_resumed"]) == (20, 10, 0)
    assert 0.0 <= m["self_top1"] <= 1.0 and m["seconds_per_class"] > 0
    files = sorted(p.relative_to(art.path).as_posix() for p in art.path.rglob("*.png"))
    assert files[0] == "train/00000/00000.png" and files[-1] == "train/00009/00001.png"
    assert len(files) == 20
    folder = ImageFolder(str(art.path / "train"))
    assert len(folder) == 20 and folder.targets == [c for c in range(10) for _ in range(2)]
    images, labels, names = load_image_set(art.path)
    assert images.shape == (20, 1, 28, 28) and images.dtype == torch.uint8
    assert names[0] == "T-shirt/top" and labels.tolist() == folder.targets
    # self_top1 is the teacher's accuracy on exactly these saved images
    net = load_teacher(teacher)
    x = (images.float() / 255 - PRESET.mean[0]) / PRESET.std[0]
    with torch.no_grad():
        top1 = (net.model(x).argmax(1) == labels).float().mean().item()
    assert m["self_top1"] == pytest.approx(top1)
    # another --classes-per-step is another artifact (one id never names two payloads);
    # unset, it resolves to the device's default before the id is made: 2 images of 28 px
    # a unit against CPU's budget of 2^18 pixels, 167 units, so all 10 classes in one step
    other = recover(store, replace(config, classes_per_step=1), teacher)
    assert other.id != art.id and not other.cached
    auto = recover(store, replace(config, classes_per_step=None), teacher)
    assert auto.config["classes_per_step"] == (1 << 18) // (2 * 28 * 28) == 167
    explicit = recover(store, replace(config, classes_per_step=167), teacher)
    assert explicit.id == auto.id and explicit.cached


@needs_fmnist
def test_sre2l_cda_and_real(store_with_teacher: Store) -> None:
    store = store_with_teacher
    teacher = store.newest("teacher")
    ids = set()
    for method in ("sre2l", "cda"):
        art = recover(store, RecoverConfig(ipc=2, iterations=3, method=method), teacher)
        assert art.config["batching"] == "mixed" and art.metrics["images"] == 20
        assert art.config["crop_schedule"] == ("cosine" if method == "cda" else "fixed")
        ids.add(art.id)
    assert len(ids) == 2
    real = recover(store, RecoverConfig(ipc=3, method="real", seed=5), teacher)
    images, labels, _ = load_image_set(real.path)
    want, want_labels = load_dataset("fashion-mnist").sample_train_images(3, 5)
    assert want.dtype == torch.uint8 and torch.equal(images, want)
    assert torch.equal(labels, want_labels)
    assert real.metrics["self_top1"] >= 0.6  # real images: the teacher mostly knows them
    assert real.selectors["method"] == "real"


def _teacher_without_class_stats(store: Store) -> str:
    source = store.newest("teacher")
    tensors = load_file(str(source.file("bn_stats.safetensors")))
    globals_only = {k: v for k, v in tensors.items() if ".global_" in k}

    def build(staging) -> dict:
        for name in ("weights.safetensors", "model.json", "data.json"):
            shutil.copy(source.file(name), staging.path / name)
        save_file(globals_only, str(staging.path / "bn_stats.safetensors"))
        return dict(source.metrics)

    art = store.produce("teacher", {**source.config, "variant": "no-class-stats"}, [], build,
                        selectors={"dataset": "fashion-mnist"})
    return art.id


def _cli(store: Store, *args: str):
    return CliRunner().invoke(app, ["recover", "--store", str(store.root), *args])


@pytest.mark.parametrize(("args", "text"), [
    (["--ipc", "0"], "--ipc must be at least 1"),
    (["--ipc", "-1"], "--ipc must be at least 1"),
    (["--method", "dream"], "unknown --method 'dream'"),
    (["--batching", "rows"], "unknown --batching"),
    (["--lr", "0"], "--lr must be a positive number"),
])
def test_bad_options_are_one_line_errors(store_with_teacher: Store, args, text) -> None:
    result = _cli(store_with_teacher, *args)
    assert result.exit_code == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and text in errors[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


def test_missing_or_wrong_parent(tmp_path: Path, store_with_teacher: Store) -> None:
    empty = _cli(Store(tmp_path / "empty"))
    assert empty.exit_code == 2 and "lpld squeeze" in empty.stderr
    assert "Error: no teacher in store" in empty.stderr
    store = store_with_teacher
    images = recover(store, RecoverConfig(ipc=1, iterations=1), store.newest("teacher"))
    wrong = _cli(store, "--from", images.id[:10])
    assert wrong.exit_code == 2 and "is a images, not a teacher" in wrong.stderr
    bare = _teacher_without_class_stats(store)
    no_stats = _cli(store, "--from", bare, "--ipc", "1", "--iterations", "1")
    assert no_stats.exit_code == 2 and "no class-wise BN statistics" in no_stats.stderr
    ok = _cli(store, "--from", bare, "--ipc", "1", "--iterations", "1", "--bn-target",
              "global", "--json")
    assert ok.exit_code == 0, ok.stderr
    assert json.loads(ok.stdout)["config"]["bn_target"] == "global"


# -------------------------------------------------------------------------------- resume
def _recover_cmd(store: Path) -> list[str]:
    return [sys.executable, "-m", "lpld_cli", "recover", "--store", str(store), "--ipc", "2",
            "--iterations", "15", "--classes-per-step", "1", "--json"]


@needs_fmnist
def test_kill_mid_run_then_resume_equals_uninterrupted(teacher_store: Store,
                                                       tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    shutil.copytree(teacher_store.root / "objects", killed / "objects")
    env = {k: v for k, v in os.environ.items() if k != "LPLD_DEBUG"}
    proc = subprocess.Popen(_recover_cmd(killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 300
    done: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in (killed / "staging").glob("*/train/*") if not p.name.startswith(".")]
        if len(done) >= 2:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert 2 <= len(done) < 10, "the run must be killed between classes"
    assert not (killed / "objects" / "images").exists()

    resumed = subprocess.run(_recover_cmd(killed), capture_output=True, text=True, env=env,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    result = json.loads(resumed.stdout)
    assert result["metrics"]["classes_resumed"] >= 2
    # the same run, uninterrupted, in a fresh store (same code path, in-process)
    clean_store = Store(tmp_path / "clean")
    shutil.copytree(teacher_store.root / "objects", clean_store.root / "objects")
    clean = recover(clean_store, RecoverConfig(ipc=2, iterations=15, classes_per_step=1),
                    clean_store.newest("teacher"))
    assert clean.id == result["artifact"]["id"] and clean.metrics["classes_resumed"] == 0
    a, la, _ = load_image_set(Path(result["artifact"]["path"]))
    b, lb, _ = load_image_set(clean.path)
    assert torch.equal(la, lb) and a.shape == (20, 1, 28, 28)
    assert torch.equal(a, b)
