"""``tqgen.eval`` and ``python -m tqgen eval`` on a tiny random-weight model (real weights:
tests/hf/test_real_weights.py)."""

import json
from pathlib import Path

import pytest
import torch

from testing_models import tiny_causal_lm
from tqgen.cli import main
from tqgen.eval import EXACT_OPTIONS, Setting, cache_options, evaluate, parse_bits, parse_skip, settings_grid

TEXT = Path(__file__).parent / "data" / "harbour.txt"
# Every token compressed (no exact sinks or window, where the cache has them): what the tests measure.
ALL_COMPRESSED = {name: 0 for name in EXACT_OPTIONS if name in cache_options()}


def char_tokenizer():
    """A character-level fast tokenizer whose ids (ASCII codes) fit a 128-token vocabulary."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"[UNK]": 3, "\n": 10, **{chr(i): i for i in range(32, 127)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm("llama", layers=2)


@pytest.fixture(scope="module")
def ids():
    return char_tokenizer()(TEXT.read_text(), return_tensors="pt").input_ids[:, :40]


def test_fused_equals_fake_quant_and_compression_costs_accuracy(model, ids, device):
    settings = [Setting(bits, bits, path=path, **ALL_COMPRESSED) for bits in (4, 2) for path in ("fused", "fake")]
    report = evaluate(model.to(device), ids, settings, keep_log_probs=True)
    assert [(r.setting.label, r.setting.path) for r in report.results] == [
        ("K4V4", "fused"), ("K4V4", "fake"), ("K2V2", "fused"), ("K2V2", "fake")]
    fused4, fake4, fused2, fake2 = report.results
    for fused, fake in ((fused4, fake4), (fused2, fake2)):
        assert fused.compressed_layers == fake.compressed_layers == 2 == fused.layers
        # the same codes read by the kernels and by decompress + SDPA: equal up to rounding
        assert (fused.log_probs - fake.log_probs).abs().max().item() < 1e-3
        assert abs(fused.kl - fake.kl) < 1e-4
    assert 0 < fused4.kl < fused2.kl
    assert 0 < fused4.top1 <= 1 and fused4.ppl > 1
    assert fused4.delta_ppl == pytest.approx(fused4.ppl - report.reference_ppl)
    assert fused4.sink_tokens == fused4.residual_length == 0
    # D=64 at 4 bits: 128 -> 36 bytes a vector, allocated for 64 tokens (the capacity granule) of 40
    assert fused4.fp16_ratio == fake4.fp16_ratio == pytest.approx(128 / 36 * 40 / 64)
    table = report.table()
    assert "exact (reference)" in table and "K2V2" in table and "fake" in table


def test_skip_layers_centring_and_chunks(model, ids, device):
    model = model.to(device)
    settings = [Setting(4, 4, skip_layers=(-1,), **ALL_COMPRESSED), Setting(4, 4, center_keys=False, **ALL_COMPRESSED)]
    skipped, uncentred = evaluate(model, ids, settings).results
    assert skipped.compressed_layers == 1 and skipped.fp16_ratio < uncentred.fp16_ratio
    assert 0 < skipped.kl and 0 < uncentred.kl
    # in chunks, as a prompt and decode steps arrive: both paths read the same cache alike
    fused, fake = evaluate(model, ids, settings_grid([(4, 4)], paths=("fused", "fake")), chunk=16).results
    assert fused.compressed_layers == 2 and abs(fused.kl - fake.kl) < 1e-4
    assert (fused.sink_tokens, fused.residual_length) == (fake.sink_tokens, fake.residual_length)


def test_exact_token_options_go_to_the_cache_where_it_has_them(model, ids, device):
    setting = Setting(4, 4, sink_tokens=2, residual_length=0)
    if "sink_tokens" not in cache_options():
        with pytest.raises(ValueError, match="has no sink_tokens, residual_length option"):
            evaluate(model, ids, [setting])
        return
    result = evaluate(model.to(device), ids, [setting]).results[0]
    assert (result.sink_tokens, result.residual_length) == (2, 0)


def test_bad_settings_are_clear_errors(model, ids):
    with pytest.raises(ValueError, match="k_bits"):
        Setting(5, 4)
    with pytest.raises(ValueError, match="path must be one of"):
        Setting(path="exact")
    with pytest.raises(ValueError, match="input_ids must be"):
        evaluate(model, ids[0], [])
    assert parse_bits("4") == (4, 4) and parse_bits("4/2") == (4, 2)
    assert parse_skip("none") == () and parse_skip("0,-1") == (0, -1)
    with pytest.raises(ValueError, match="--bits"):
        parse_bits("K4")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """``python -m tqgen eval ARGS`` in this process (the interpreter is already set up): (rc, out, err)."""
    rc = main(["eval", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_cli_prints_the_table_and_writes_json(tmp_path, model, capsys):
    model.save_pretrained(tmp_path / "model")
    char_tokenizer().save_pretrained(tmp_path / "model")
    out = tmp_path / "eval.json"
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rc, stdout, stderr = run_cli(capsys, str(tmp_path / "model"), str(TEXT), "--bits", "4", "3/2", "--path", "both",
                                 "--skip-layers", "none", "--skip-layers=0", "--tokens", "32", "--device", device,
                                 "--json", str(out))
    assert rc == 0, stdout + stderr
    assert "32 tokens of" in stdout
    assert "| K/V bits" in stdout and "exact (reference)" in stdout
    data = json.loads(out.read_text())
    assert data["tokens"] == 32 and data["reference_ppl"] > 1
    rows = [(r["k_bits"], r["v_bits"], tuple(r["skip_layers"]), r["path"]) for r in data["rows"]]
    assert rows == [(k, v, skip, path) for k, v in ((4, 4), (3, 2)) for skip in ((), (0,))
                    for path in ("fused", "fake")]
    assert all(r["kl"] >= 0 and 0 <= r["top1"] <= 1 for r in data["rows"])


def test_cli_errors_name_the_option(tmp_path, capsys):
    for args, what in ((["--bits", "x"], "--bits"), (["--tokens", "1"], "--tokens"),
                       (["--skip-layers=a"], "--skip-layers")):
        rc, _, stderr = run_cli(capsys, str(tmp_path), str(TEXT), *args)
        assert rc == 2 and stderr.startswith("tqgen eval: error:") and what in stderr, stderr
