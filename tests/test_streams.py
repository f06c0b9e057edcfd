"""Streams: permutations fixed by seed + t and shared by train and test; rotations."""

import math

import pytest
import torch

from superpose import streams
from superpose.streams.permuting import task_permutation
from superpose.streams.rotating import rotate


@pytest.fixture(scope="module")
def digits():
    return streams.create("permuted-digits", tasks=4, seed=3)


def test_task_zero_is_unpermuted_and_others_are_permutations(digits):
    p0 = digits.permutations[0]
    assert torch.equal(p0, torch.arange(p0.numel()))
    for t in range(1, 4):
        p = digits.permutations[t]
        assert torch.equal(p.sort().values, torch.arange(p.numel()))
        assert not torch.equal(p, p0)
    # Drawn from seed + t: the same permutation comes back from a fresh draw.
    assert torch.equal(digits.permutations[2], task_permutation(64, 2, 3))
    assert torch.equal(task_permutation(64, 2, 3), task_permutation(64, 1, 4))


def test_train_and_test_share_the_permutation(digits):
    g = torch.Generator().manual_seed(0)
    x, _ = digits.train_batch(2, 0, 16, g)
    raw = digits.task_data(2, "train").x
    # Each permuted training image is some raw image with task 2's permutation applied.
    perm = digits.permutations[2]
    flat = raw.reshape(len(raw), -1)[:, perm]
    for img in x.reshape(16, -1):
        assert (flat == img).all(dim=1).any()
    tx, _ = next(digits.eval_batches(2, "test", 8))
    traw = digits.task_data(2, "test").x[:8].reshape(8, -1)
    assert torch.equal(tx.reshape(8, -1), traw[:, perm])


def test_batches_are_deterministic_for_a_seed(digits):
    a = digits.train_batch(1, 0, 8, torch.Generator().manual_seed(5))
    b = digits.train_batch(1, 0, 8, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_task_out_of_range(digits):
    with pytest.raises(ValueError, match="out of range"):
        digits.task_data(4, "train")


def test_normalize_standardises_with_the_training_set_and_then_permutes():
    """normalize: every split is (x - m) / s with the mean and std of all training pixels (the
    PSP authors' (x - 0.1307) / 0.3081 on MNIST), and task t still permutes the result."""
    raw = streams.create("permuted-digits", tasks=3, seed=3)
    norm = streams.create("permuted-digits", tasks=3, seed=3, normalize=True)
    m, s = raw.task_data(0, "train").x.mean(), raw.task_data(0, "train").x.std()
    assert norm.pixel_mean_std == pytest.approx((float(m), float(s)))
    assert 0.1 < float(m) < 0.9 and float(s) > 0.1  # so the check below is not vacuous
    for split in ("train", "test"):
        assert torch.allclose(norm.task_data(0, split).x, (raw.task_data(0, split).x - m) / s)
    train = norm.task_data(0, "train").x
    assert abs(float(train.mean())) < 1e-5 and float(train.std()) == pytest.approx(1, abs=1e-5)
    perm = norm.permutations[2]
    assert torch.equal(perm, raw.permutations[2])
    tx, _ = next(norm.eval_batches(2, "test", 8))
    flat = norm.task_data(2, "test").x[:8].reshape(8, -1)
    assert torch.equal(tx.reshape(8, -1), flat[:, perm])


def test_validation_split_is_held_out():
    s = streams.create("permuted-digits", tasks=2, seed=0, validation=0.2)
    n_train, n_val = len(s.task_data(0, "train")), len(s.task_data(0, "val"))
    assert n_val == 300 and n_train == 1200


def test_rotation_is_counter_clockwise():
    img = torch.zeros(1, 1, 5, 5)
    img[0, 0, 0, 2] = 1.0  # a dot at the top centre
    out = rotate(img, 90.0)
    # Counter-clockwise by 90 degrees on screen: top centre -> middle left.
    assert out[0, 0].argmax().item() == 2 * 5 + 0
    assert torch.allclose(rotate(img, 360.0), img, atol=1e-5)
    back = rotate(rotate(img, 90.0), -90.0)
    assert torch.allclose(back, img, atol=1e-5)


def test_rotating_stream_schedule_and_angles():
    s = streams.create("rotating-digits", tasks=25, steps_per_task=100, seed=0)
    sched = s.schedule(100)
    assert s.num_tasks == 10 and len(sched) == 25
    assert [seg.task for seg in sched[:12]] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert s.angle(0) == 0 and s.angle(250) == 90 and s.angle(1000) == 0
    x = s.task_data(0, "test").x[:4]
    # Evaluating task 0 shows the unrotated test set; task 5 shows it at 180 degrees.
    assert torch.equal(s.transform(x, 0, None), x)
    assert torch.allclose(s.transform(x, 5, None), rotate(x, 180.0))
    assert math.isclose(s.angle(999), 359.64)
