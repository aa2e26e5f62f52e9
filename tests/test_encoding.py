"""Label encodings and the losses on them, against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lpld_cli.errors import ConfigError
from lpld_cli.models.losses import (
    calibrate_student_temperature,
    lowest_temperature,
    soft_kl,
    temperature_at,
)
from lpld_cli.storage.encoding import (
    Encoding,
    SoftTarget,
    decode_full,
    decode_target,
    dense_logits,
    encode,
    reencode,
    tail_mass,
)

C = 10


def _logits(seed: int = 0, shape: tuple[int, ...] = (3, 4, C), scale: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


@pytest.mark.parametrize("dtype, levels", [("q8", 255), ("q4", 15)])
def test_quantized_round_trip_within_half_a_step(dtype, levels):
    x = _logits()
    enc = Encoding(logits_dtype=dtype)
    arrays = encode(x, enc)
    assert arrays["logits"].dtype == np.uint8
    assert arrays["logits"].shape[-1] == (C if dtype == "q8" else C // 2)
    back = decode_full(arrays, enc, C)
    shifted = x - x.max(-1, keepdim=True).values  # softmax ignores the constant shift
    step = (x.max(-1).values - x.min(-1).values) / levels
    scale = torch.from_numpy(arrays["logits_scale"].astype(np.float32))
    assert (scale >= step - 1e-7).all() and (scale <= step * 1.001 + 1e-7).all()
    err = (back - shifted).abs().amax(-1)
    assert (err <= scale / 2 + 1e-5).all()
    # the codes span the range: the minimum sits at the last level (up to rounding)
    assert torch.allclose(back.amin(-1), shifted.amin(-1), atol=float(scale.max()))
    torch.testing.assert_close(torch.softmax(back, -1), torch.softmax(x, -1),
                               atol=0.25 if dtype == "q4" else 0.02, rtol=0)


def test_q4_odd_class_count_and_constant_slot():
    x = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    enc = Encoding(logits_dtype="q4")
    arrays = encode(x, enc)
    assert arrays["logits"].shape == (2, 2)
    back = decode_full(arrays, enc, 3)
    # hand: scale 2/15 -> codes 15, 7.5 (rounds to 8), 0
    s = float(arrays["logits_scale"][0])
    assert back[0, 2] == 0 and abs(back[0, 0] + 2) <= s / 2
    assert (back[1] == 0).all() and float(arrays["logits_scale"][1]) == 0


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32"])
def test_float_encodings_round_trip(dtype):
    x = _logits()
    back = decode_full(encode(x, Encoding(logits_dtype=dtype)), Encoding(logits_dtype=dtype), C)
    assert torch.equal(back, x.to(getattr(torch, dtype)).float())


def test_topk_keeps_the_k_largest_exactly():
    x = _logits(1)
    enc = Encoding(topk=3)
    arrays = encode(x, enc)
    assert arrays["topk_index"].dtype == np.uint8 and arrays["topk_values"].dtype == np.float16
    assert "topk_fill" not in arrays
    order = np.argsort(-x.numpy(), axis=-1)[..., :3]
    np.testing.assert_array_equal(arrays["topk_index"], order)
    np.testing.assert_array_equal(arrays["topk_values"],
                                  np.take_along_axis(x.numpy(), order, -1).astype(np.float16))
    assert Encoding(topk=5).schema(4, 300)["topk_index"][0] == "uint16"


def test_fills_by_hand():
    x = torch.tensor([[4.0, 1.0, 0.0, -2.0, 3.0]])
    t = 2.0
    mins = encode(x, Encoding(topk=2, topk_fill="min"))
    assert float(mins["topk_fill"][0]) == -2.0
    lme = encode(x, Encoding(topk=2, topk_fill="lme", fill_temperature=t))
    # tail {1, 0, -2}: f = T·log(mean(exp(z/T)))
    hand = t * math.log((math.exp(0.5) + 1 + math.exp(-1)) / 3)
    assert abs(float(lme["topk_fill"][0]) - hand) < 2e-3
    # at T the dense vector reproduces FKD's marginal smoothing
    dense = dense_logits(lme, Encoding(topk=2, topk_fill="lme", fill_temperature=t), 5)
    p = torch.softmax(dense / t, -1)[0]
    full = torch.softmax(x / t, -1)[0]
    assert abs(float(p[0]) - float(full[0])) < 1e-3 and abs(float(p[4]) - float(full[4])) < 1e-3
    share = (1 - float(full[0] + full[4])) / 3
    for c in (1, 2, 3):
        assert abs(float(p[c]) - share) < 1e-3
    # fill "none": the dense vector masks the other classes with -inf (zero mass)
    none = dense_logits(encode(x, Encoding(topk=2)), Encoding(topk=2), 5)
    assert torch.isinf(none[0, [1, 2, 3]]).all()


def test_reencode_narrows_and_refuses_to_widen():
    x = _logits(2)
    fp16, q8 = Encoding(), Encoding(logits_dtype="q8")
    src = encode(x, fp16)
    np.testing.assert_array_equal(reencode(src, fp16, q8, C)["logits"],
                                  encode(x.half().float(), q8)["logits"])
    k5 = Encoding(topk=5, topk_fill="lme", fill_temperature=4.0)
    k3 = Encoding(topk=3, topk_fill="lme", fill_temperature=4.0)
    five = encode(x, k5)
    three = reencode(five, k5, k3, C)
    direct = encode(x, k3)
    np.testing.assert_array_equal(three["topk_index"], direct["topk_index"])
    np.testing.assert_allclose(three["topk_fill"].astype(np.float32),
                               direct["topk_fill"].astype(np.float32), atol=2e-2)
    for src_enc, dst_enc, why in [
        (q8, fp16, "widening"), (Encoding(topk=3), fp16, "no full logits"),
        (Encoding(topk=3), Encoding(topk=5), "K 5 > 3"),
        (Encoding(topk=3), Encoding(topk=2, topk_fill="min"), "no min fill"),
        (k5, Encoding(topk=3, topk_fill="lme", fill_temperature=1.0), "T=4"),
        (fp16, Encoding(logits_dtype="bfloat16"), "not fewer bits")]:
        with pytest.raises(ConfigError, match=why):
            src_enc.check_narrowing(dst_enc)


@pytest.mark.parametrize("enc, why", [
    (Encoding(topk=0), "at least 1"), (Encoding(topk=10), "below the number of classes"),
    (Encoding(logits_dtype="int3"), "unknown --logits-dtype"),
    (Encoding(topk=2, topk_fill="lme"), "fill temperature"),
    (Encoding(topk_fill="min"), "top-k stores only")])
def test_bad_encodings(enc, why):
    with pytest.raises(ConfigError, match=why):
        enc.validate(C)


def test_tail_mass_by_hand():
    x = torch.tensor([[2.0, 1.0, 0.0]])
    e = [math.exp(v / 2) for v in (2.0, 1.0, 0.0)]
    assert abs(float(tail_mass(x, 1, 2.0)[0]) - (1 - e[0] / sum(e))) < 1e-9


def test_renormalised_topk_kl_against_a_hand_formula():
    student = torch.tensor([[1.0, -1.0, 0.5, 2.0]])
    values, index = torch.tensor([[3.0, 1.0]]), torch.tensor([[2, 0]])
    t, ts = 2.0, 0.5
    p = [math.exp(3 / t), math.exp(1 / t)]
    p = [v / sum(p) for v in p]
    z = sum(math.exp(s / ts) for s in student[0].tolist())
    log_q = [math.log(math.exp(student[0, c].item() / ts) / z) for c in (2, 0)]
    hand = sum(pi * (math.log(pi) - lq) for pi, lq in zip(p, log_q, strict=True))
    got = soft_kl(student, SoftTarget(values=values, index=index), t, ts)
    assert abs(float(got) - hand) < 1e-6
    # gradients stay finite (no 0·log 0 over masked classes)
    s = student.clone().requires_grad_()
    soft_kl(s, SoftTarget(values=values, index=index), t).backward()
    assert torch.isfinite(s.grad).all()
    # a full target equals the classic KL(softmax(t/T) ‖ softmax(s/T))
    teacher = torch.tensor([[0.0, 1.0, 3.0, -1.0]])
    pt = torch.softmax(teacher / t, -1)
    classic = (pt * (pt.log() - torch.log_softmax(student / t, -1))).sum()
    assert abs(float(soft_kl(student, SoftTarget(logits=teacher), t)) - float(classic)) < 1e-6


def test_decode_target_of_a_stored_row():
    x = _logits(3, (4, C))
    enc = Encoding(topk=4, topk_fill="min")
    target = decode_target(encode(x, enc), enc, C)
    assert target.values.dtype == torch.float32 and target.index.dtype == torch.int64
    dense = target.dense(C)
    assert torch.equal(dense.gather(-1, target.index), target.values)
    assert (dense.amin(-1) == x.amin(-1).half().float()).all()


def test_temperature_schedules_by_hand():
    assert temperature_at("constant", 99, 300, 20, 2, 30, 0.7) == 20
    assert temperature_at("step", 29, 300, 20, 2, 30, 0.7) == 20
    assert abs(temperature_at("step", 30, 300, 20, 2, 30, 0.7) - 14) < 1e-12
    assert temperature_at("step", 299, 300, 20, 2, 30, 0.7) == 2  # 20·0.7^9 = 0.8 -> floor
    assert temperature_at("cosine", 0, 10, 20, 1, 30, 0.7) == 20
    assert abs(temperature_at("cosine", 5, 10, 20, 1, 30, 0.7) - 10.5) < 1e-12
    assert lowest_temperature("step", 60, 20, 2, 30, 0.7) == pytest.approx(14)
    with pytest.raises(ConfigError):
        temperature_at("linear", 0, 10, 20, 1, 30, 0.7)


def test_student_temperature_calibration_finds_the_matching_scale():
    teacher = torch.tensor([[4.0, 2.0, 0.0, -1.0]])
    t = 4.0
    student = teacher / 8  # s / t = z / T at t = 0.5: the KL is zero there
    found = calibrate_student_temperature(student, SoftTarget(logits=teacher), t)
    assert abs(found - 0.5) < 0.006


def test_hard_epochs_sit_in_the_middle_and_bad_train_options():
    from lpld_cli.train import TrainConfig

    config = TrainConfig(epochs=10, hard_epochs=2)
    assert [e for e in range(10) if config.hard_epoch(e)] == [4, 5]
    assert not any(TrainConfig(epochs=10).hard_epoch(e) for e in range(10))
    for bad, why in [({"temperature_schedule": "linear"}, "unknown --temperature-schedule"),
                     ({"student_temperature": "hot"}, "same, auto or a positive number"),
                     ({"student_temperature": "-1"}, "same, auto or a positive number"),
                     ({"temperature_gamma": 1.5}, "gamma"), ({"hard_epochs": 10}, "hard-epochs"),
                     ({"temperature_step": 0}, "temperature-step")]:
        with pytest.raises(ConfigError, match=why):
            TrainConfig(epochs=10, **bad).validate()
    assert TrainConfig(temperature_schedule="cosine", temperature=20.0, temperature_min=1.0,
                       epochs=10).temperature_at(5) == pytest.approx(10.5)
