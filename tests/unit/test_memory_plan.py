"""Choosing how a model fits in the GPU's memory (`runner.memory`, `.quantize`,
`.offload`; memory_plan.py): the SD families by their thresholds, FLUX.1 and SD 3.x by
what their transformer and T5 need at each precision, best quality first."""

from __future__ import annotations

import pytest

from alice_spool.config import ConfigError, RunnerSettings
from alice_spool.memory_plan import GB, MemoryChoice, MemoryPlan, needed_gb, plan


@pytest.mark.parametrize(
    ("family", "free_gb", "expected"),
    [
        ("sd1", 24, "full"),
        ("sd1", 4, "full"),
        ("sd1", 3.9, "low"),  # a 6 GB card with the desktop on it
        ("sd1", 1.5, "minimal"),
        ("sd2", 4.5, "low"),
        ("sdxl", 16, "full"),
        ("sdxl", 8, "low"),  # an 8 GB card
        ("sdxl", 5, "minimal"),
        ("unknown", 3, "low"),  # like SD 1.x
    ],
)
def test_auto_follows_free_memory_and_family(family: str, free_gb: float, expected: str) -> None:
    chosen = plan("auto", free_bytes=int(free_gb * GB), family=family)
    assert chosen.mode == expected and chosen.quantize == "none"
    assert chosen.offload == {"full": "none", "low": "model", "minimal": "sequential"}[expected]


@pytest.mark.parametrize("mode", ["auto", "full", "low", "minimal"])
@pytest.mark.parametrize("family", ["sdxl", "flux", "sd3"])
def test_without_a_gpu_there_is_nothing_to_save(mode: str, family: str) -> None:
    # (`place` puts the whole model on a CPU or Apple GPU: results say so)
    for offload in ("auto", "none", "model", "group"):
        chosen = plan(mode, free_bytes=None, family=family, quantize="auto", offload=offload)
        assert chosen == MemoryPlan("full")


@pytest.mark.parametrize("mode", ["full", "low", "minimal"])
def test_an_explicit_mode_is_kept(mode: str) -> None:
    assert plan(mode, free_bytes=100 * GB, family="sd1").mode == mode


@pytest.mark.parametrize(
    ("family", "card_gb", "expected"),
    [
        ("flux", 80, ("full", "none", "none")),  # an H100: everything resident in bf16
        ("flux", 32, ("low", "none", "model")),  # bf16 a model at a time before fp8
        ("flux", 24, ("full", "fp8", "none")),
        ("flux", 16, ("low", "fp8", "model")),
        ("flux", 12, ("low", "nf4", "model")),  # the 12 GB card
        ("flux", 6, ("low", "nf4", "group")),
        ("sd3", 40, ("full", "none", "none")),
        ("sd3", 24, ("low", "none", "model")),
        ("sd3", 16, ("low", "fp8", "model")),  # SD 3.5 Large on 16 GB
        ("sd3", 10, ("low", "nf4", "model")),
    ],
)
def test_auto_fits_the_transformer_families_best_quality_first(
    family: str, card_gb: float, expected: tuple[str, str, str]
) -> None:
    free = int((card_gb - 0.5) * GB)  # what the desktop and the CUDA context leave
    chosen = plan("auto", free_bytes=free, family=family, quantize="auto")
    assert (chosen.mode, chosen.quantize, chosen.offload) == expected
    fits = needed_gb(family, chosen.quantize, chosen.offload) <= card_gb
    assert fits or chosen.offload == "group"


def test_what_is_set_is_kept_and_the_rest_fitted_around_it() -> None:
    free = int(15.5 * GB)
    # quantize set: the offload that fits with it
    assert plan(free_bytes=free, family="flux", quantize="nf4").offload == "none"
    assert plan(free_bytes=free, family="flux", quantize="none").offload == "group"
    # offload set: the quantization that fits with it
    assert plan(free_bytes=free, family="flux", quantize="auto", offload="none").quantize == "nf4"
    assert plan(free_bytes=80 * GB, family="flux", quantize="int8").offload == "none"
    # both set: as set, even where it does not fit (the load says so)
    both = plan(free_bytes=2 * GB, family="flux", quantize="int8", offload="none")
    assert (both.quantize, both.offload) == ("int8", "none")
    # runner.memory low means offload when offload is left to it
    assert plan("low", free_bytes=80 * GB, family="sd3").offload == "model"
    # quantize none (the default) never quantizes, whatever the card
    assert plan(free_bytes=4 * GB, family="flux").quantize == "none"
    # the SD families are never quantized; group offload where asked
    sd = plan(free_bytes=80 * GB, family="sdxl", quantize="auto", offload="group")
    assert (sd.quantize, sd.offload) == ("none", "group")


@pytest.mark.parametrize("quantize", ["nf4", "int8", "fp8"])
def test_quantizing_off_cuda_is_refused_saying_why(quantize: str) -> None:
    choice = MemoryChoice(quantize=quantize)
    for device in ("cpu", "mps"):
        refusal = choice.refusal(device)
        assert refusal is not None and f"runner.quantize = {quantize}" in refusal
        assert "CUDA" in refusal and device in refusal
    assert choice.refusal("cuda") is None
    with pytest.raises(ConfigError):
        choice.plan(None, "flux")
    assert MemoryChoice(quantize="auto").refusal("cpu") is None


def test_the_descriptions_say_what_runs() -> None:
    assert MemoryPlan("full").describe() == "full"
    assert MemoryPlan("low", offload="model").describe() == "low"  # as jobs always said
    assert MemoryPlan("low", "nf4", "model").describe() == (
        "low, quantized nf4 (transformer and T5)"
    )
    assert MemoryPlan("low", "fp8", "group").describe() == (
        "low, quantized fp8 (transformer and T5), group offload"
    )


@pytest.mark.parametrize(
    ("key", "value"), [("quantize", "nf8"), ("quantize", ""), ("offload", "sequential")]
)
def test_bad_settings_are_refused_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError) as refused:
        RunnerSettings(**{key: value})
    assert refused.value.details["key"] == f"runner.{key}"
    assert RunnerSettings(quantize="nf4", offload="group").memory_choice == MemoryChoice(
        "auto", "nf4", "group"
    )


def test_without_bitsandbytes_auto_never_picks_it_and_asking_for_it_is_refused() -> None:
    free = int(11.5 * GB)  # a 12 GB card: nf4 with model offload, where it is installed
    assert plan(free_bytes=free, family="flux", quantize="auto").quantize == "nf4"
    without = plan(free_bytes=free, family="flux", quantize="auto", bitsandbytes=False)
    assert (without.quantize, without.offload) == ("fp8", "group")  # the smallest then
    roomy = plan(free_bytes=int(15.5 * GB), family="sd3", quantize="auto", bitsandbytes=False)
    assert (roomy.quantize, roomy.offload) == ("fp8", "model")
    for quantize in ("nf4", "int8"):
        refusal = MemoryChoice(quantize=quantize).refusal("cuda", bitsandbytes=False)
        assert refusal is not None and "alice-spool[gpu]" in refusal
        with pytest.raises(ConfigError):
            plan(free_bytes=free, family="flux", quantize=quantize, bitsandbytes=False)
    assert MemoryChoice(quantize="fp8").refusal("cuda", bitsandbytes=False) is None
