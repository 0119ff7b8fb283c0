"""ircore.logging_utils: TensorBoard images written and read back, and the console progress bar's switch."""
from __future__ import annotations

import io

import numpy as np
import pytest

from ircore import logging_utils


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_images_are_real_tensorboard_image_summaries(tmp_path):
    logger = logging_utils.MetricLogger(tmp_path, print_fn=None)
    figure = np.linspace(-1, 1, 20 * 30 * 3, dtype=np.float32).reshape(20, 30, 3)  # HWC in [-1, 1]
    single = np.full((1, 8, 12, 3), 200, np.uint8)  # NHWC uint8
    logger.images(3, {"figure": figure, "single": single})
    logger.images(5, {"figure": figure})
    logger.scalars(5, {"psnr_y": 20.0}, kind="eval", echo=False)
    logger.close()
    got = logging_utils.read_tensorboard_images(tmp_path / logging_utils.TENSORBOARD_DIR)
    assert set(got) == {"eval/figure", "eval/single"}
    assert [step for step, _ in got["eval/figure"]] == [3, 5]
    step, pixels = got["eval/figure"][0]
    assert pixels.shape == (20, 30, 3) and pixels.dtype == np.uint8
    expected = np.clip(np.round((figure + 1) * 127.5), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels, expected)  # PNG is lossless
    np.testing.assert_array_equal(got["eval/single"][0][1], single[0])
    assert set(logging_utils.read_tensorboard_scalars(tmp_path)) == {"eval/psnr_y"}  # images are no scalars


def test_images_refuse_bad_shapes(tmp_path):
    logger = logging_utils.MetricLogger(tmp_path, print_fn=None)
    with pytest.raises(ValueError, match="HWC or NHWC"):
        logger.images(1, {"bad": np.zeros((4, 4))})
    logger.close()


def test_progress_bar_follows_the_terminal_and_the_switch():
    assert not logging_utils.progress_enabled("auto", io.StringIO())  # a file or pipe: no bar
    assert logging_utils.progress_enabled("auto", _Terminal())
    assert logging_utils.progress_enabled("on", io.StringIO())
    assert not logging_utils.progress_enabled("off", _Terminal())
    with pytest.raises(ValueError, match="progress_bar must be one of"):
        logging_utils.progress_enabled("yes", io.StringIO())


def test_progress_bar_draws_steps_per_second_and_eta_only_when_on():
    stream = io.StringIO()
    bar = logging_utils.progress_bar(total=10, initial=4, mode="on", stream=stream)
    bar.update(3)
    bar.close()
    text = stream.getvalue()
    assert "7/10" in text and "step" in text

    quiet = io.StringIO()
    for kwargs in ({"mode": "auto"}, {"mode": "off"}, {"mode": "on", "enabled": False}):
        bar = logging_utils.progress_bar(total=10, initial=0, stream=quiet, **kwargs)
        bar.update(1)
        bar.set_postfix_str("loss 1")
        bar.close()
        assert logging_utils.print_above(bar, print) is print
    assert quiet.getvalue() == ""


def test_lines_print_above_the_bar():
    stream, lines = _Terminal(), []
    bar = logging_utils.progress_bar(total=5, initial=0, mode="auto", stream=stream)
    say = logging_utils.print_above(bar, lambda line, **kw: lines.append(line))
    bar.update(2)
    say("step 2 | loss 0.5", flush=True)
    bar.close()
    assert lines == ["step 2 | loss 0.5"]
    assert logging_utils.print_above(bar, None) is None
