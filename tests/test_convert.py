"""HF <-> orbax checkpoint conversion (vsr1_jax.ckpt, `python -m vsr1_jax.convert`) and the orbax helpers
(vsr1_jax.ckpt.orbax_io): bit-exact round trips of tiny Qwen3-VL and released-VideoSearch-R1-style folders, logits
parity after conversion, named errors, and no half-written output on failure."""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import safetensors.torch
import torch

from tests.hf_fixtures import RELEASED_D, make_released_fixture, save_tiny, tiny_hf_model
from vsr1_jax.ckpt import hf_export, hf_read, layout, orbax_io, read, safetensors_io, write
from vsr1_jax.ckpt.cli import main
from vsr1_jax.ckpt.layout import ConvertError
from vsr1_jax.models.qwen3_vl import params as P
from vsr1_jax.models.qwen3_vl.config import Qwen3VLConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- helpers ----------------------------------------------------------------------------------------------------

def read_folder(folder):
    """{key: torch tensor} over every *.safetensors file of an HF folder, read with the safetensors library."""
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(".safetensors"):
            out.update(safetensors.torch.load_file(os.path.join(folder, name)))
    return out


def assert_bit_identical(a: dict, b: dict):
    assert list(sorted(a)) == list(sorted(b))
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k].contiguous().view(-1).view(torch.uint8),
                           b[k].contiguous().view(-1).view(torch.uint8)), k


def assert_files_equal(src, dst, names):
    for n in names:
        with open(os.path.join(src, n), "rb") as f, open(os.path.join(dst, n), "rb") as g:
            assert f.read() == g.read(), n


def assert_nothing_left(parent):
    """A failed conversion leaves neither DST nor a staging folder next to it."""
    assert os.listdir(parent) == [], os.listdir(parent)


def our_logits(conv, ids):
    from flax import nnx
    from vsr1_jax.models.qwen3_vl.model import Qwen3VL
    from vsr1_jax.models.qwen3_vl.rope import get_rope_index
    model = Qwen3VL(conv.cfg, rngs=nnx.Rngs(0))
    nnx.update(model, jax.tree.map(jnp.asarray, conv.params))
    pos, _ = get_rope_index(ids, image_token_id=conv.cfg.image_token_id, video_token_id=conv.cfg.video_token_id)
    return np.asarray(model(jnp.asarray(ids), jnp.asarray(pos)).logits)


def rewrite(folder, fn):
    """Apply fn to the {key: tensor} of a single-file fixture and save it back."""
    path = os.path.join(folder, "model.safetensors")
    sd = fn(safetensors.torch.load_file(path))
    safetensors.torch.save_file(sd, path, metadata={"format": "pt"})


# ---- fixtures ---------------------------------------------------------------------------------------------------

CASES = {
    # name: (tiny_hf_model kwargs, save_tiny kwargs, orbax-to-hf --max-shard-size)
    "fp32_untied_single": (dict(seed=0), dict(dtype="float32"), "5GB"),
    "bf16_tied_sharded": (dict(seed=1, tie=True), dict(dtype="bfloat16", max_shard_size="100KB"), "100KB"),
    "fp32_tied_rope_scaling": (dict(seed=2, tie=True), dict(dtype="float32", rope_form="scaling"), "5GB"),
}


@pytest.fixture(scope="module")
def hf_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    out = {}
    for name, (mkw, skw, _) in CASES.items():
        model = tiny_hf_model(**mkw)
        out[name] = (save_tiny(str(root / name), model, **skw), model)
    return out


@pytest.fixture(scope="module")
def base_fp32(hf_folders):
    return hf_folders["fp32_untied_single"][0]


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("released") / "vsr1-stage1")
    info = make_released_fixture(path)
    return path, info


# ---- round trips ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(CASES))
def test_round_trip_bit_identical(case, hf_folders, tmp_path):
    from transformers import Qwen3VLForConditionalGeneration
    src, _ = hf_folders[case]
    dst, back = str(tmp_path / "orbax"), str(tmp_path / "back")
    assert main(["hf-to-orbax", src, dst, "-q"]) == 0
    assert main(["orbax-to-hf", dst, back, "-q", "--max-shard-size", CASES[case][2]]) == 0

    assert_bit_identical(read_folder(src), read_folder(back))
    sharded = os.path.exists(os.path.join(src, safetensors_io.INDEX_FILE))
    assert os.path.exists(os.path.join(back, safetensors_io.INDEX_FILE)) == sharded
    if sharded:  # several shards with an index, as transformers wrote them
        assert len([n for n in os.listdir(back) if n.endswith(".safetensors")]) > 1
    assert_files_equal(src, back, ["config.json", "generation_config.json"])

    ref = Qwen3VLForConditionalGeneration.from_pretrained(src)
    got, info_b = Qwen3VLForConditionalGeneration.from_pretrained(back, output_loading_info=True)
    assert not info_b["missing_keys"] and not info_b["unexpected_keys"]
    assert_bit_identical(ref.state_dict(), got.state_dict())

    meta = json.load(open(os.path.join(dst, layout.META_FILE)))
    assert meta["kind"] == "qwen3_vl" and meta["sqr"] is None and meta["query_embedder"] is None
    tied = CASES[case][0].get("tie", False)
    assert meta["tie_word_embeddings"] == tied
    assert [t["key"] for t in meta["hf_tensors"]] == list(safetensors_io.SafetensorsFolder(src).keys)
    assert meta["source_dtypes"] == (["BF16"] if "bf16" in case else ["F32"])
    assert any(t["key"] == "lm_head.weight" for t in meta["hf_tensors"]) == (not tied)


@pytest.mark.parametrize("case", ["fp32_untied_single", "fp32_tied_rope_scaling"])
def test_converted_params_reproduce_hf_logits(case, hf_folders, tmp_path):
    src, hf = hf_folders[case]
    dst = str(tmp_path / "orbax")
    write.hf_to_orbax(src, dst, quiet=True)
    conv = read.load_converted(dst)
    ids = np.random.RandomState(0).randint(0, 900, size=(1, 40))
    with torch.no_grad():
        ref = hf(input_ids=torch.tensor(ids)).logits.numpy()
    got = our_logits(conv, ids)
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_rope_scaling_form_loads_same_config(tmp_path):
    model = tiny_hf_model(seed=3)
    a = Qwen3VLConfig.from_json(save_tiny(str(tmp_path / "params"), model, rope_form="parameters"))
    b = Qwen3VLConfig.from_json(save_tiny(str(tmp_path / "scaling"), model, rope_form="scaling"))
    assert "rope_scaling" in json.load(open(tmp_path / "scaling" / "config.json"))["text_config"]
    assert a == b
    dst = str(tmp_path / "orbax")
    write.hf_to_orbax(str(tmp_path / "scaling"), dst, quiet=True)
    assert read.load_converted(dst).cfg == a


def test_load_hf_folder_matches_orbax_and_dtype_cast(base_fp32, tmp_path):
    mem = hf_read.load_hf_folder(base_fp32)
    dst = str(tmp_path / "orbax")
    write.hf_to_orbax(base_fp32, dst, quiet=True)
    disk = read.load_converted(dst)
    flat_a, flat_b = layout.flatten(mem.params), layout.flatten(disk.params)
    assert set(flat_a) == set(flat_b)
    for k in flat_a:
        assert flat_a[k].dtype == flat_b[k].dtype and np.array_equal(flat_a[k], flat_b[k]), k
        assert flat_a[k].flags.owndata  # detached from the source files' memory map
    # The key table, spot-checked by hand: stacked layer 1 of q_proj is its transpose, conv is (C*T*P*P, out).
    sd = read_folder(base_fp32)
    assert np.array_equal(flat_a[("text", "q_kernel")][1],
                          sd["model.language_model.layers.1.self_attn.q_proj.weight"].numpy().T)
    w = sd["model.visual.patch_embed.proj.weight"].numpy()
    assert np.array_equal(flat_a[("visual", "patch_kernel")], w.reshape(w.shape[0], -1).T)

    # --dtype bfloat16: params are bf16; the way back restores the recorded F32 dtype with bf16-rounded values.
    dst16, back = str(tmp_path / "orbax16"), str(tmp_path / "back16")
    assert main(["hf-to-orbax", base_fp32, dst16, "--dtype", "bfloat16", "-q"]) == 0
    conv16 = read.load_converted(dst16)
    assert {v.dtype for v in layout.flatten(conv16.params).values()} == {np.dtype(ml_dtypes.bfloat16)}
    assert conv16.meta["param_dtypes"] == {"model": "bfloat16"}
    assert main(["orbax-to-hf", dst16, back, "-q"]) == 0
    got = read_folder(back)
    for k, v in sd.items():
        assert got[k].dtype == torch.float32
        assert torch.equal(got[k], v.to(torch.bfloat16).to(torch.float32)), k


def test_qwen3vlmodel_layout_and_redundant_tied_lm_head(hf_folders, tmp_path, caplog):
    src = hf_folders["fp32_tied_rope_scaling"][0]
    ref = hf_read.load_hf_folder(src)
    bare = str(tmp_path / "bare")
    shutil.copytree(src, bare)
    # Qwen3VLModel layout (visual.*, language_model.*), plus a tied lm_head.weight equal to the embedding.
    rewrite(bare, lambda sd: {**{k.removeprefix("model."): v for k, v in sd.items()},
                              "lm_head.weight": sd["model.language_model.embed_tokens.weight"].clone()})
    dst, back = str(tmp_path / "orbax"), str(tmp_path / "back")
    with caplog.at_level("WARNING", logger="vsr1_jax.ckpt.hf_read"):
        write.hf_to_orbax(bare, dst, quiet=True)
    assert "lm_head.weight" in caplog.text and "dropped" in caplog.text
    conv = read.load_converted(dst)
    assert conv.meta["key_prefix"] == "" and conv.meta["dropped_tied_lm_head"]
    assert "lm_head" not in conv.params["text"]
    for k, v in layout.flatten(ref.params).items():
        assert np.array_equal(v, layout.flatten(conv.params)[k]), k
    write.orbax_to_hf(dst, back, quiet=True)
    assert_bit_identical(read_folder(bare), read_folder(back))  # layout and lm_head key written back

    # A tied checkpoint whose lm_head differs from the embedding is inconsistent: refuse, name it.
    rewrite(bare, lambda sd: {**sd, "lm_head.weight": sd["lm_head.weight"] + 1})
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConvertError, match="lm_head.weight differs"):
        write.hf_to_orbax(bare, str(out / "x"), quiet=True)
    assert_nothing_left(out)


def test_released_checkpoint_round_trip(released, tmp_path):
    from flax import nnx
    from transformers import Qwen3VLForConditionalGeneration
    from vsr1_jax.models.sqr import SQRHead
    from vsr1_jax.processing.tokenizer import load_tokenizer
    src, info = released
    dst, back = str(tmp_path / "orbax"), str(tmp_path / "back")
    assert main(["hf-to-orbax", src, dst, "-q"]) == 0
    conv = read.load_converted(dst)
    assert conv.meta["kind"] == "videosearch_r1" and conv.meta["query_embedder"] == layout.EMBEDDER_DIR
    assert conv.cfg.text.vocab_size == info["vocab_size"] == len(info["tokenizer"])
    assert (conv.sqr_cfg.policy_hidden, conv.sqr_cfg.retrieval_dim, conv.sqr_cfg.embedder_hidden) == (64, RELEASED_D,
                                                                                                       64)
    # SQR tensors land in our SQRHead, transposed where torch Linear.
    head = SQRHead(conv.sqr_cfg, rngs=nnx.Rngs(0))
    nnx.update(head, jax.tree.map(jnp.asarray, conv.sqr_params))
    for e in P.expand(P.sqr_rules()):
        want = info["refine"][e.hf].T if e.kind == "T" else info["refine"][e.hf]
        got = np.asarray(getattr(head, e.ours[1])[...])
        assert got.shape == want.shape and np.array_equal(got, want), e.hf
    # The embedder is its own model; the tokenizer (with <REFINE>, last id) comes along.
    emb_sd = info["embedder"].state_dict()
    assert conv.embedder is not None and conv.embedder.sqr_params is None
    assert np.array_equal(conv.embedder.params["text"]["embed"],
                          emb_sd["model.language_model.embed_tokens.weight"].numpy())
    tok, tinfo = load_tokenizer(conv.tokenizer_dir)
    assert tinfo.refine_id == len(tok) - 1 == conv.cfg.text.vocab_size - 1 and not tinfo.added_refine
    assert conv.embedder.tokenizer_dir.endswith(os.path.join("query_embedder", "hf_files"))

    assert main(["orbax-to-hf", dst, back, "-q", "--max-shard-size", "200KB"]) == 0
    assert_bit_identical(read_folder(src), read_folder(back))
    assert_bit_identical(read_folder(os.path.join(src, "query_embedder")),
                         read_folder(os.path.join(back, "query_embedder")))
    assert_files_equal(src, back, ["config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
                                   "generation_config.json", "preprocessor_config.json",
                                   "query_embedder/tokenizer.json", "query_embedder/config.json"])
    hf, li = Qwen3VLForConditionalGeneration.from_pretrained(back, output_loading_info=True)
    assert not li["missing_keys"] and sorted(li["unexpected_keys"]) == sorted(info["refine"])
    assert_bit_identical(info["policy"].state_dict(), hf.state_dict())

    mem = hf_read.load_hf_folder(src)  # same thing without orbax
    for k, v in layout.flatten(mem.sqr_params).items():
        assert np.array_equal(v, conv.sqr_params[k[0]]), k


# ---- errors -----------------------------------------------------------------------------------------------------

def _drop(key):
    return lambda sd: {k: v for k, v in sd.items() if k != key}


def _truncate(folder):
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 100)


def _corrupt_header(folder):
    path = os.path.join(folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(b"{garbage")


def _set_model_type(folder):
    path = os.path.join(folder, "config.json")
    d = json.load(open(path))
    d["model_type"] = "qwen3_vl_moe"
    json.dump(d, open(path, "w"))


Q1 = "model.language_model.layers.1.self_attn.q_proj.weight"
BAD = {
    "truncated": (_truncate, ["model.safetensors", "truncated"]),
    "corrupt_header": (_corrupt_header, ["model.safetensors", "corrupt"]),
    "missing_key": (lambda d: rewrite(d, _drop(Q1)), ["missing", Q1]),
    "unknown_key": (lambda d: rewrite(d, lambda sd: {**sd, "model.visual.extra.weight": torch.zeros(2)}),
                    ["unknown", "model.visual.extra.weight"]),
    "wrong_shape": (lambda d: rewrite(d, lambda sd: {**sd, Q1: torch.zeros(60, 64)}),
                    ["shape mismatch", Q1, "expected (64, 64)", "got (60, 64)"]),
    "no_config": (lambda d: os.remove(os.path.join(d, "config.json")), ["no config.json"]),
    "no_safetensors": (lambda d: os.remove(os.path.join(d, "model.safetensors")), ["no *.safetensors"]),
    "model_type": (_set_model_type, ["model_type", "qwen3_vl_moe"]),
    "no_folder": (lambda d: shutil.rmtree(d), ["no such folder"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs_named_errors_and_nothing_left(case, base_fp32, tmp_path, capsys):
    src = str(tmp_path / "src")
    shutil.copytree(base_fp32, src)
    mutate, needles = BAD[case]
    mutate(src)
    out = tmp_path / "out"
    out.mkdir()
    dst = str(out / "ckpt")
    with pytest.raises(ConvertError) as ei:
        write.hf_to_orbax(src, dst, quiet=True)
    for n in needles:
        assert n in str(ei.value), (n, str(ei.value))
    assert_nothing_left(out)
    capsys.readouterr()
    assert main(["hf-to-orbax", src, dst, "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and needles[-1] in err and "Traceback" not in err
    assert_nothing_left(out)


def test_sharded_folder_with_missing_shard(hf_folders, tmp_path):
    src = str(tmp_path / "src")
    shutil.copytree(hf_folders["bf16_tied_sharded"][0], src)
    shard = sorted(n for n in os.listdir(src) if n.endswith(".safetensors"))[-1]
    os.remove(os.path.join(src, shard))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ConvertError, match=f"shard {shard} is listed but missing"):
        write.hf_to_orbax(src, str(out / "x"), quiet=True)
    assert_nothing_left(out)


def test_dst_exists_and_failures_mid_write_leave_nothing(base_fp32, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dst = out / "ckpt"
    dst.mkdir()
    (dst / "keep.txt").write_text("old")
    with pytest.raises(ConvertError, match="already exists.*--overwrite"):
        write.hf_to_orbax(base_fp32, str(dst), quiet=True)
    assert main(["hf-to-orbax", base_fp32, str(dst), "-q"]) == 2
    assert "--overwrite" in capsys.readouterr().err

    # A failure after the staging folder was filled (here: while writing params) keeps the old DST and removes
    # the staging folder.
    real_save = orbax_io.save_params

    def failing_save(directory, tree, **kw):
        real_save(directory, tree, **kw)
        raise OSError(28, "No space left on device (simulated)")

    monkeypatch.setattr(orbax_io, "save_params", failing_save)
    assert main(["hf-to-orbax", base_fp32, str(dst), "--overwrite", "-q"]) == 1
    assert sorted(os.listdir(out)) == ["ckpt"] and (dst / "keep.txt").read_text() == "old"
    monkeypatch.undo()

    assert main(["hf-to-orbax", base_fp32, str(dst), "--overwrite", "-q"]) == 0
    assert sorted(os.listdir(out)) == ["ckpt"] and not (dst / "keep.txt").exists()

    # Same on the way back: a failing shard write leaves no HF folder.
    calls = []

    def failing_write(path, items, get, on_tensor=None):
        calls.append(path)
        if len(calls) == 2:
            raise ConvertError("simulated write failure")
        return real_write(path, items, get, on_tensor)

    real_write = write.write_safetensors
    monkeypatch.setattr(write, "write_safetensors", failing_write)
    back_parent = tmp_path / "back"
    back_parent.mkdir()
    with pytest.raises(ConvertError, match="simulated"):
        write.orbax_to_hf(str(dst), str(back_parent / "hf" / "model"), max_shard_size="100KB", quiet=True)
    assert len(calls) == 2
    assert_nothing_left(back_parent)  # the created parent folder hf/ is gone too

    with pytest.raises(ConvertError, match="not a converted vsr1 checkpoint"):
        write.orbax_to_hf(base_fp32, str(back_parent / "x"), quiet=True)
    with pytest.raises(ConvertError, match="must not be SRC"):
        write.hf_to_orbax(base_fp32, os.path.join(base_fp32, "sub"), quiet=True)
    with pytest.raises(ConvertError, match="contain SRC"):  # --overwrite would otherwise delete the source
        write.hf_to_orbax(base_fp32, os.path.dirname(base_fp32), overwrite=True, quiet=True)
    assert os.path.exists(os.path.join(base_fp32, "config.json"))
    assert_nothing_left(back_parent)


def test_cli_subprocess_error_exit(tmp_path):
    r = subprocess.run([sys.executable, "-m", "vsr1_jax.convert", "hf-to-orbax", str(tmp_path / "missing"),
                        str(tmp_path / "dst")], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=120)
    assert r.returncode == 2
    assert "error:" in r.stderr and "no such folder" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "dst").exists()


def test_safetensors_writer_is_readable_by_the_library(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones((3,), ml_dtypes.bfloat16) * 1.5,
              "c": np.array([1, 2], np.int64), "d": np.zeros((0, 4), np.float16)}
    items = [(k, safetensors_io.NP_TO_ST[v.dtype], v.shape) for k, v in arrays.items()]
    path = str(tmp_path / "x.safetensors")
    safetensors_io.write_safetensors(path, items, arrays.__getitem__)
    assert (8 + int.from_bytes(open(path, "rb").read(8), "little")) % 8 == 0
    lib = safetensors.torch.load_file(path)
    assert torch.equal(lib["b"], torch.full((3,), 1.5, dtype=torch.bfloat16)) and lib["d"].shape == (0, 4)
    ours = safetensors_io.SafetensorsFile(path)
    assert ours.metadata == {"format": "pt"}
    for k, v in arrays.items():
        assert ours.get(k).dtype == v.dtype and np.array_equal(ours.get(k), v)
    assert not ours.get("a").flags.owndata  # a view of the memory map, not a copy
    ours.release("a")  # pages dropped; reading again faults them back in from the file
    assert np.array_equal(ours.get("a"), arrays["a"])
    assert safetensors_io.parse_size("5GB") == 5 * 10**9 and safetensors_io.parse_size("2GiB") == 2 * 2**30
    assert safetensors_io.parse_size("100KB") == 100_000 and safetensors_io.parse_size(123) == 123


# ---- orbax helpers ----------------------------------------------------------------------------------------------

def test_checkpoint_save_restore_params(tmp_path):
    tree = {"model": {"w": np.arange(12, dtype=np.float32).reshape(3, 4),
                      "b": (np.arange(4) / 3).astype(ml_dtypes.bfloat16)},
            "sqr": {"k": jnp.ones((2, 2), jnp.float16)}}
    d = str(tmp_path / "p")
    orbax_io.save_params(d, tree)
    with pytest.raises(FileExistsError):
        orbax_io.save_params(d, tree)
    r = orbax_io.restore_params(d)
    assert type(r["model"]["w"]) is np.ndarray and r["model"]["b"].dtype == ml_dtypes.bfloat16
    assert np.array_equal(r["model"]["b"], tree["model"]["b"]) and np.array_equal(r["sqr"]["k"], tree["sqr"]["k"])
    meta = orbax_io.params_metadata(d)
    assert meta["model"]["w"] == jax.ShapeDtypeStruct((3, 4), np.float32)
    sh = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    r = orbax_io.restore_params(d, shardings=sh)
    assert isinstance(r["model"]["w"], jax.Array) and r["model"]["w"].sharding == sh
    target = {"model": {"w": jax.ShapeDtypeStruct((3, 4), jnp.bfloat16)}}
    r = orbax_io.restore_params(d, target=target, partial=True)
    assert list(r) == ["model"] and list(r["model"]) == ["w"] and r["model"]["w"].dtype == jnp.bfloat16
    orbax_io.save_params(d, {"x": np.zeros(2)}, overwrite=True)
    assert list(orbax_io.restore_params(d)) == ["x"]


def test_checkpoint_manager_keeps_n_and_restores(tmp_path):
    d = str(tmp_path / "run")
    state = {"w": jnp.arange(4.0), "step": jnp.array(0)}
    with orbax_io.CheckpointManager(d, max_to_keep=2) as m:
        for step in (1, 2, 3):
            assert m.save(step, {"w": state["w"] * step, "step": jnp.array(step)}, extra={"seen": step * 10})
        m.wait()
        assert m.all_steps() == [2, 3] and m.latest_step() == 3
    with orbax_io.CheckpointManager(d, max_to_keep=2) as m:  # a fresh manager, as after a restart
        assert m.latest_step() == 3 and m.restore_extra() == {"seen": 30}
        r = m.restore()
        assert np.array_equal(r["w"], np.arange(4.0) * 3)
        abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state)
        r = m.restore(2, target=abstract)
        assert isinstance(r["w"], jax.Array) and np.array_equal(r["w"], np.arange(4.0) * 2)
        m.save(4, state)  # without extra
        m.wait()
        assert m.restore_extra(4) is None and m.all_steps() == [3, 4]


def test_export_of_in_memory_models_loads_in_transformers(tiny_pair, tmp_path):
    """A trained policy (here: the tiny model with a random SQR head) + embedder + tokenizer written with
    `hf_export.export_hf`: transformers loads the policy with the same logits, the refine_* tensors and the tokenizer
    are there, query_embedder/ loads too, and hf-to-orbax reads the folder back into the same params."""
    from flax import nnx
    from transformers import AutoTokenizer, Qwen3VLForConditionalGeneration
    from tests.test_sqr import random_head
    from vsr1_jax.data.tiny_tokenizer import build_tiny_tokenizer
    from vsr1_jax.models import sqr as S
    hf, model, cfg = tiny_pair
    head = random_head(cfg.text.hidden_size, D=48, He=64, seed=1)
    params = nnx.to_pure_dict(nnx.state(model))
    sqr = nnx.to_pure_dict(nnx.state(head))
    tok = build_tiny_tokenizer()
    dst = str(tmp_path / "export")
    hf_export.export_hf(dst, cfg, params, sqr_params=sqr, sqr_cfg=head.cfg, tokenizer=tok,
                      embedder=(cfg, params, tok))
    back = Qwen3VLForConditionalGeneration.from_pretrained(dst).eval()
    ids = torch.tensor([[5, 9, 33, 100, 7]])
    with torch.no_grad():
        np.testing.assert_allclose(back(input_ids=ids).logits.numpy(), hf(input_ids=ids).logits.numpy(), atol=1e-5)
    assert AutoTokenizer.from_pretrained(dst).convert_tokens_to_ids("<REFINE>") == len(tok) - 1
    st = safetensors.torch.load_file(os.path.join(dst, "model.safetensors"))
    np.testing.assert_array_equal(st["refine_projector.0.weight"].numpy(), np.asarray(head.proj_fc1_kernel[...]).T)
    Qwen3VLForConditionalGeneration.from_pretrained(os.path.join(dst, "query_embedder"))
    ck = hf_read.load_hf_folder(dst)
    np.testing.assert_array_equal(ck.params["text"]["q_kernel"], np.asarray(model.text.q_kernel[...]))
    assert isinstance(ck.sqr_cfg, S.SQRConfig) and ck.embedder is not None
