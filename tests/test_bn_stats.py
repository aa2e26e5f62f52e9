"""Class-wise BN statistics against direct references (forward hooks, plain loops)."""

from __future__ import annotations

import torch
from torch import nn

from lpld_cli.models.bn_stats import EMA_MOMENTUM, bn_layers, class_bn_stats
from lpld_cli.models.factory import ConvNet


def _model_and_batches(num_classes: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    model = ConvNet(num_classes, in_chans=2, image_size=12, width=6, depth=2)
    # Non-trivial global statistics so the layers' inputs are not all standardised.
    for bn in bn_layers(model).values():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(5):
        y = torch.randint(0, num_classes, (9,), generator=g)
        x = torch.randn(9, 2, 12, 12, generator=g) + y.view(-1, 1, 1, 1) * 0.7
        batches.append((x, y))
    return model.eval(), batches


def _bn_inputs(model: nn.Module, batches) -> dict[str, list[torch.Tensor]]:
    captured: dict[str, list[torch.Tensor]] = {name: [] for name in bn_layers(model)}
    hooks = [bn.register_forward_hook(lambda _m, inp, _o, n=name: captured[n].append(inp[0]))
             for name, bn in bn_layers(model).items()]
    with torch.no_grad():
        for x, _ in batches:
            model(x)
    for h in hooks:
        h.remove()
    return captured


def test_exact_matches_direct_computation() -> None:
    model, batches = _model_and_batches()
    stats = class_bn_stats(model, batches, num_classes=4, mode="exact")
    inputs = _bn_inputs(model, batches)
    labels = torch.cat([y for _, y in batches])
    assert set(stats) == set(inputs) and len(stats) == 2
    for name, tensors in inputs.items():
        x = torch.cat(tensors).double()
        for c in range(4):
            xc = x[labels == c]
            mean = xc.mean((0, 2, 3))
            var = xc.var((0, 2, 3), unbiased=False)
            assert torch.allclose(stats[name].mean[c].double(), mean, atol=1e-4)
            assert torch.allclose(stats[name].var[c].double(), var, atol=1e-4)
            assert int(stats[name].count[c]) == int((labels == c).sum())
        assert stats[name].mean.shape == (4, 6) and stats[name].var.shape == (4, 6)


def test_ema_matches_reference_loop() -> None:
    model, batches = _model_and_batches(seed=1)
    stats = class_bn_stats(model, batches, num_classes=4, mode="ema")
    inputs = _bn_inputs(model, batches)
    for name, tensors in inputs.items():
        mean = torch.zeros(4, 6, dtype=torch.float64)
        var = torch.ones(4, 6, dtype=torch.float64)
        for x, (_, y) in zip(tensors, batches, strict=True):
            for c in range(4):
                if (y == c).any():
                    xc = x[y == c].double()
                    mean[c] = (1 - EMA_MOMENTUM) * mean[c] + EMA_MOMENTUM * xc.mean((0, 2, 3))
                    var[c] = (1 - EMA_MOMENTUM) * var[c] + EMA_MOMENTUM * xc.var(
                        (0, 2, 3), unbiased=False)
        assert torch.allclose(stats[name].mean.double(), mean, atol=1e-5)
        assert torch.allclose(stats[name].var.double(), var, atol=1e-5)


def test_pass_leaves_model_untouched() -> None:
    model, batches = _model_and_batches(seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    class_bn_stats(model, batches, num_classes=4, mode="exact")
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model.training


def test_exact_is_the_same_bits_in_any_batch_order_and_split() -> None:
    """Order-independent accumulation: shuffled batches and a 2-way split (summed as
    all_reduce would) give byte-identical statistics; a float64 oracle agrees."""
    from lpld_cli.models.bn_stats import _Accumulator

    model, batches = _model_and_batches(seed=3)
    batches = batches + [(x * 3 + 1, y) for x, y in batches]  # wider range of sums
    forward = class_bn_stats(model, batches, num_classes=4, mode="exact")
    shuffled = class_bn_stats(model, [batches[i] for i in (7, 2, 9, 0, 5, 1, 8, 3, 6, 4)],
                              num_classes=4, mode="exact")
    # two "ranks": each accumulates its own batches; the integer sums are added
    accs = []
    layers = bn_layers(model)
    for part in (batches[0::2], batches[1::2]):
        acc = {name: _Accumulator(4, bn.num_features, "exact", torch.device("cpu"))
               for name, bn in layers.items()}
        labels: list[torch.Tensor] = []
        hooks = [bn.register_forward_pre_hook(
            lambda _m, inp, a=acc[name], seen=labels: a.update(inp[0], seen[-1]))
            for name, bn in layers.items()]
        with torch.no_grad():
            for x, y in part:
                labels[:] = [y]
                model(x)
        for h in hooks:
            h.remove()
        accs.append(acc)
    for name in layers:
        a, b = accs[0][name], accs[1][name]
        for t_a, t_b in ((a.images, b.images), (a.elements, b.elements), (a.fixed, b.fixed),
                         (a.check, b.check)):
            t_a += t_b
        split = a.result()
        for other in (shuffled[name], split):
            assert forward[name].mean.numpy().tobytes() == other.mean.numpy().tobytes()
            assert forward[name].var.numpy().tobytes() == other.var.numpy().tobytes()
            assert torch.equal(forward[name].count, other.count)
    inputs = _bn_inputs(model, batches)
    labels = torch.cat([y for _, y in batches])
    for name, tensors in inputs.items():
        x = torch.cat(tensors).double()
        for c in range(4):
            assert torch.allclose(forward[name].mean[c].double(),
                                  x[labels == c].mean((0, 2, 3)), atol=1e-5)
