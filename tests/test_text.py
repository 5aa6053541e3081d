"""Text encoders: a sentence-transformers folder on a text dataset given as files (embedlab.text), through
``embedlab analyze`` and ``embedlab report``; embeddings checked against sentence-transformers and transformers
called directly; bad folders, files and specs are one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from embedlab.errors import EmbedlabError
from embedlab.text import TextData

WORDS = "the a cat dog movie film good great fast bad awful slow".split()
POS, NEG = ("good", "great", "fast"), ("bad", "awful", "slow")


@pytest.fixture(scope="module")
def encoder(tmp_path_factory) -> Path:
    """A tiny randomly initialised BERT (2 layers, width 16) with mean pooling, saved with
    ``SentenceTransformer.save``: the folder a user has after ``model.save("my-encoder/")``."""
    pytest.importorskip("sentence_transformers", reason="text encoders need embedlab[hf] (sentence-transformers)")
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("encoder")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(root / "bert")
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root / "bert")
    SentenceTransformer(modules=[Transformer(str(root / "bert")), Pooling(16, "mean")]).save(str(root / "st"))
    return root / "st"


def _write_texts(folder: Path, splits=(("train", 60), ("test", 40)), suffix: str = ".jsonl", seed: int = 0) -> None:
    """Two classes, ``pos`` and ``neg``, each text three class words and two neutral ones."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in splits:
        rows = []
        for i in range(n):
            label = "pos" if i % 2 == 0 else "neg"
            words = [*rng.choice(POS if label == "pos" else NEG, 3), *rng.choice(WORDS[:6], 2)]
            rows.append({"text": " ".join(words), "label": label})
        path = folder / f"{split}{suffix}"
        if suffix == ".jsonl":
            path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        else:
            sep = "\t" if suffix == ".tsv" else ","
            path.write_text(f"text{sep}label\n" + "".join(f"{r['text']}{sep}{r['label']}\n" for r in rows))


def _spec(tmp_path: Path, encoder: Path, name: str = "enc", **extra) -> Path:
    spec = {"name": name, "kind": "huggingface", "weights": str(encoder), "dataset": "text", "data_root": "texts",
            **extra}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(spec))
    return path


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "embedlab", *args], capture_output=True, text=True)


def _texts(folder: Path, split: str) -> list[str]:
    return [json.loads(line)["text"] for line in (folder / f"{split}.jsonl").read_text().splitlines()]


@pytest.mark.slow  # real processes: analyze and report, about 20 s
def test_sentence_encoder_through_analyze_and_report(tmp_path, encoder):
    from sentence_transformers import SentenceTransformer

    _write_texts(tmp_path / "texts")
    spec = _spec(tmp_path, encoder)
    proc = _cli("analyze", str(spec), "--out", str(tmp_path / "res"), "--cache-dir", str(tmp_path / "cache"),
                "--no-progress")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    r = json.loads((tmp_path / "res" / "enc" / "results.json").read_text())
    # embedding-only analyses ran; the ones needing logits or input gradients say why they did not
    for key in ("knn_accuracy", "alignment", "uniformity", "silhouette", "linear_probe_accuracy"):
        assert np.isfinite(r["metrics"][key]["value"]), key
    assert r["skipped"]["accuracy"] == "the model provides no logits (embeddings only)"
    assert "inputs are text" in r["skipped"]["robustness"]
    assert r["dataset"]["classes"] == ["neg", "pos"] and r["dataset"]["num_examples"] == 40
    # the test embeddings are exactly what sentence-transformers itself encodes, in file order
    with np.load(tmp_path / "res" / "enc" / "arrays.npz") as f:
        z, y = f["embeddings"], f["labels"]
        assert "logits" not in f.files and "thumbnails" not in f.files
    st = SentenceTransformer(str(encoder), device="cpu", local_files_only=True)
    ref = st.encode(_texts(tmp_path / "texts", "test"), convert_to_numpy=True)
    np.testing.assert_allclose(z, ref, rtol=1e-5, atol=1e-6)
    labels = [json.loads(line)["label"] for line in (tmp_path / "texts" / "test.jsonl").read_text().splitlines()]
    assert y.tolist() == [["neg", "pos"].index(label) for label in labels]
    proc = _cli("report", str(tmp_path / "res"), "-o", str(tmp_path / "r.html"))
    assert proc.returncode == 0, proc.stderr
    assert "enc" in (tmp_path / "r.html").read_text()


def test_hidden_state_embedding_is_the_masked_mean_of_that_layer(tmp_path, encoder):
    """``"embedding": "hidden_state:K"`` against transformers called directly: Σ_t m_t h^K_t / Σ_t m_t."""
    from transformers import AutoModel, AutoTokenizer

    from embedlab.analyses.runner import open_source
    from embedlab.store import extract

    _write_texts(tmp_path / "texts", splits=(("test", 12),))
    texts = _texts(tmp_path / "texts", "test")
    model = AutoModel.from_pretrained(encoder, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(encoder, local_files_only=True)
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    mask = batch["attention_mask"].unsqueeze(-1).float()
    for k in (0, 1, 2, -1):
        src = open_source(_spec(tmp_path, encoder, name=f"h{k}", embedding=f"hidden_state:{k}"))
        got = extract(src.model, src.data.split("test"), batch_size=5)
        ref = (hidden[k] * mask).sum(1) / mask.sum(1)
        np.testing.assert_allclose(got.embeddings, ref.numpy(), rtol=1e-5, atol=1e-6)
        assert got.logits is None
    # mean pooling of the last layer is the sentence embedding itself
    pooled = extract(open_source(_spec(tmp_path, encoder, name="pooled")).model, src.data.split("test"))
    np.testing.assert_allclose(pooled.embeddings, ((hidden[-1] * mask).sum(1) / mask.sum(1)).numpy(), atol=1e-5)


def test_cached_encoding_is_reused_and_an_edited_file_is_encoded_again(tmp_path, encoder):
    from embedlab.analyses.runner import analyze_source, open_source

    _write_texts(tmp_path / "texts")
    spec = _spec(tmp_path, encoder)
    args = dict(analyses=["knn"], cache_dir=tmp_path / "cache", progress=False)
    analyze_source(open_source(spec), tmp_path / "res", **args)
    entries = set((tmp_path / "cache").iterdir())
    assert len(entries) == 2  # train and test; no logits file in either
    assert all(not (e / "logits.npy").exists() for e in entries)
    analyze_source(open_source(spec), tmp_path / "res", force=True, **args)
    assert set((tmp_path / "cache").iterdir()) == entries
    _write_texts(tmp_path / "texts", splits=(("test", 40),), seed=1)
    analyze_source(open_source(spec), tmp_path / "res", force=True, **args)
    # both splits again: labels are indices into the classes of all files, so any edited file changes every key
    assert len(set((tmp_path / "cache").iterdir()) - entries) == 2


def test_test_split_only_and_csv_tsv_and_integer_labels(tmp_path, encoder):
    from embedlab.analyses.runner import analyze_source, open_source

    _write_texts(tmp_path / "texts", splits=(("test", 30),), suffix=".csv")
    out = analyze_source(open_source(_spec(tmp_path, encoder)), tmp_path / "res", analyses=["knn", "clustering"],
                         cache_dir=tmp_path / "cache", progress=False)
    r = json.loads((out / "results.json").read_text())
    assert r["skipped"]["knn"] == "no train split in the dataset"
    assert r["skipped"]["clustering.linear_probe_accuracy"].startswith("needs a train split")
    assert "silhouette" in r["metrics"]

    tsv = tmp_path / "tsv"
    _write_texts(tsv, suffix=".tsv")
    data = TextData(tsv)
    assert data.splits == ("train", "test") and len(data.split("train")) == 60 and data.info.classes == ("neg", "pos")
    bom = tmp_path / "bom"  # a CSV saved by Excel starts with a byte-order mark
    bom.mkdir()
    (bom / "test.csv").write_text("\ufefftext,label\n\"a, b\",x\nc,y\n", encoding="utf-8")
    assert TextData(bom).split("test")[0] == ("a, b", 0)
    ints = tmp_path / "ints"
    ints.mkdir()
    (ints / "test.jsonl").write_text("".join(json.dumps({"text": "a", "label": v}) + "\n" for v in (10, 2, 2, 0)))
    data = TextData(ints)
    assert data.info.classes == ("0", "2", "10")  # numeric order, not "0", "10", "2"
    assert data.split("test")[0] == ("a", 2)


@pytest.mark.parametrize("case, message", [
    ("no_test", "no test file"),
    ("bad_json", "line 2 is not JSON"),
    ("no_label", "row 1 has no 'text' and 'label' fields"),
    ("float_label", "must be a class name or an integer"),
    ("two_files", "both test.jsonl and test.csv"),
    ("unknown_option", "unknown option(s) label_column"),
])
def test_bad_text_folders_are_one_line(tmp_path, case, message):
    folder = tmp_path / "t"
    folder.mkdir()
    options = {}
    rows = {"no_test": None, "bad_json": '{"text": "a", "label": 1}\n{oops\n', "no_label": '{"text": "a"}\n',
            "float_label": '{"text": "a", "label": 0.5}\n', "two_files": '{"text": "a", "label": 1}\n',
            "unknown_option": '{"text": "a", "label": 1}\n'}[case]
    if rows is not None:
        (folder / "test.jsonl").write_text(rows)
    else:
        (folder / "train.jsonl").write_text('{"text": "a", "label": 1}\n')
    if case == "two_files":
        (folder / "test.csv").write_text("text,label\na,1\n")
    if case == "unknown_option":
        options = {"label_column": "y"}
    with pytest.raises(EmbedlabError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TextData(folder, **options)


@pytest.mark.parametrize("change, message", [
    ({"dataset": "digits"}, "is a sentence-transformers text encoder; give \"dataset\": \"text\""),
    ({"preprocess": {"size": 32}}, "a text encoder tokenises as its folder says"),
    ({"embedding": "pooler"}, "must be null (its sentence embedding) or \"hidden_state:K\""),
    ({"embedding": "hidden_state:7"}, "hidden states 0 .. 2"),
])
def test_bad_text_specs_are_one_line(tmp_path, encoder, change, message):
    from embedlab.analyses.runner import analyze_source, open_source

    _write_texts(tmp_path / "texts", splits=(("test", 4),))
    with pytest.raises(EmbedlabError) as err:
        analyze_source(open_source(_spec(tmp_path, encoder, **change)), tmp_path / "res", analyses=["align_uniform"],
                       cache_dir=tmp_path / "cache", progress=False)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_text_dataset_needs_data_and_a_sentence_transformers_folder(tmp_path, encoder):
    _write_texts(tmp_path / "texts", splits=(("test", 4),))
    proc = _cli("analyze", str(_spec(tmp_path, encoder, data_root=None)), "--out", str(tmp_path / "res"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "dataset 'text' needs \"data_root\"" in proc.stderr
    (tmp_path / "image-model").mkdir()
    proc = _cli("analyze", str(_spec(tmp_path, tmp_path / "image-model")), "--out", str(tmp_path / "res"))
    assert proc.returncode == 2 and "a sentence-transformers folder (one with modules.json)" in proc.stderr


def test_a_module_class_from_the_folder_is_refused_and_never_imported(tmp_path, encoder, monkeypatch):
    """modules.json naming a class outside sentence_transformers (code in the folder, or any installed package) is
    refused without importing it: sentence-transformers >= 6 needs trust_remote_code, which embedlab never sets."""
    import shutil

    from embedlab.analyses.runner import open_source

    folder = tmp_path / "evil"
    shutil.copytree(encoder, folder)
    marker = tmp_path / "ran"
    (folder / "evil_module.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass Pooling: pass\n")
    modules = json.loads((folder / "modules.json").read_text())
    modules[1]["type"] = "evil_module.Pooling"
    (folder / "modules.json").write_text(json.dumps(modules))
    _write_texts(tmp_path / "texts", splits=(("test", 4),))
    monkeypatch.syspath_prepend(str(folder))  # importable, were anything to import it
    with pytest.raises(EmbedlabError, match="evil_module.Pooling.*would run code.*never passes trust_remote_code"):
        open_source(_spec(tmp_path, folder))
    assert not marker.exists()


def test_weights_are_read_from_safetensors_only(tmp_path, encoder):
    """A folder whose transformer weights are a pickle (pytorch_model.bin) is refused, not unpickled."""
    import shutil

    from safetensors.torch import load_file

    from embedlab.analyses.runner import open_source

    folder = tmp_path / "bin"
    shutil.copytree(encoder, folder)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    _write_texts(tmp_path / "texts", splits=(("test", 4),))
    with pytest.raises(EmbedlabError, match="no file named model.safetensors"):
        open_source(_spec(tmp_path, folder))


def test_texts_of_many_lengths_keep_their_order(tmp_path, encoder):
    """Within a chunk the encoder sorts texts by length into batches of 32 (less padding) and puts the embeddings
    back in file order: 70 texts of 1 to 12 words, both embedding paths, against one text at a time."""
    from embedlab.analyses.runner import open_source
    from embedlab.store import extract

    rng = np.random.default_rng(3)
    texts = [" ".join(rng.choice(WORDS, int(rng.integers(1, 13)))) for _ in range(70)]
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "test.jsonl").write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n"
                                                           for i, t in enumerate(texts)))
    for name, extra in (("pooled", {}), ("last", {"embedding": "hidden_state:-1"})):
        src = open_source(_spec(tmp_path, encoder, name=name, **extra))
        got = extract(src.model, src.data.split("test")).embeddings
        with torch.no_grad():
            one = np.concatenate([src.model.embed_and_logits([t])[0].numpy() for t in texts])
        np.testing.assert_allclose(got, one, rtol=1e-4, atol=1e-5, err_msg=name)


def test_careless_specs_and_folders_are_one_line(tmp_path, encoder):
    """From an outside review: dataset_options null is no options, a non-object is one line (image specs too); a
    folder without tokenizer files (every word [UNK], one embedding for all texts) is refused; K is ASCII digits."""
    import shutil

    from embedlab.analyses.runner import open_source

    _write_texts(tmp_path / "texts", splits=(("test", 6),))
    assert open_source(_spec(tmp_path, encoder, dataset_options=None)).data.options == {"text_field": "text",
                                                                                          "label_field": "label"}
    for spec in (_spec(tmp_path, encoder, dataset_options="abc"),
                 _spec(tmp_path, encoder, name="img", dataset="digits", kind="torchvision", arch="resnet18",
                       weights=None, dataset_options=["x"])):
        with pytest.raises(EmbedlabError, match="'dataset_options' must be a JSON object of key: value pairs"):
            open_source(spec)
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(encoder, bare)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (bare / f).unlink()
    with pytest.raises(EmbedlabError, match="tokenizer knows only its 5 special tokens"):
        open_source(_spec(tmp_path, bare, name="bare"))
    with pytest.raises(EmbedlabError, match="must be null"):
        open_source(_spec(tmp_path, encoder, name="arabic", embedding="hidden_state:\u0663"))
    src = open_source(_spec(tmp_path, encoder, name="neg", embedding="hidden_state:-9"))
    with pytest.raises(EmbedlabError, match=r"hidden states 0 \.\. 2 \(or -1 \.\. -3 from the last\)"):
        src.model.embed_and_logits(["the cat"])
