"""Writes the seed corpus of every fuzz target into tests/fuzz/<target>/corpus/ (deterministic; run from
anywhere: python3 tests/fuzz/make_seeds.py). Seeds are small valid inputs and a few near misses; the
regression inputs found by fuzzing are kept next to them as regress-<what>.<ext> and never regenerated."""
import hashlib
import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.dirname(os.path.dirname(HERE))


def put(target, name, data):
    d = os.path.join(HERE, target, "corpus")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# recipe: the shipped recipes, overrides in "#set" lines, and near misses.
for rel in ["recipes/pretrain/tiny.textproto"]:
    with open(os.path.join(SOURCE, rel)) as f:
        put("recipe", os.path.basename(rel), f.read())
put("recipe", "overrides.textproto",
    "#set model.top_k=1\n#set routing.normalize_gates=false\n#set model.moe_layers=[0,2]\n"
    "model { vocab_size: 64 d_model: 16 num_layers: 4 num_heads: 2 ffn_hidden: 32 num_experts: 4 top_k: 2 "
    "moe_ffn_hidden: 16 }\ndata { train_prefix: \"t\" }\n")
put("recipe", "routing.textproto",
    "model { vocab_size: 64 d_model: 16 num_layers: 2 num_heads: 2 ffn_hidden: 32 num_experts: 8 top_k: 2 moe_ffn_hidden: 16 }\n"
    "routing { score_function: SIGMOID num_groups: 4 group_topk: 2 bias_update_rate: 0.001 capacity_factor: 1.25 "
    "drop_policy: POSITION z_loss_coeff: 0.001 }\ndata { train_prefix: \"t\" seq_len: 32 }\ntrain { steps: 3 }\n")
put("recipe", "unknown-field.textproto", "model { top_kk: 2 }\n")
put("recipe", "bad-value.textproto", "model { num_experts: -4 }\ndata { train_prefix: \"t\" }\n")


# indexed_dataset: u16 idx length, PREFIX.idx, PREFIX.bin (Megatron MMIDIDX v1; data/indexed_dataset.h).
def indexed(lengths, dtype=8, item=2, docs=None, tokens=None):
    docs = list(range(len(lengths) + 1)) if docs is None else docs
    idx = b"MMIDIDX\0\0" + struct.pack("<QBQQ", 1, dtype, len(lengths), len(docs))
    idx += struct.pack(f"<{len(lengths)}i", *lengths)
    pointers, at = [], 0
    for n in lengths:
        pointers.append(at)
        at += n * item
    idx += struct.pack(f"<{len(lengths)}q", *pointers) + struct.pack(f"<{len(docs)}q", *docs)
    fmt = {1: "B", 2: "b", 3: "h", 4: "i", 5: "q", 6: "d", 7: "f", 8: "H"}[dtype]
    tokens = tokens if tokens is not None else [t % 50 for t in range(sum(lengths))]
    return struct.pack("<H", len(idx)) + idx + struct.pack(f"<{len(tokens)}{fmt}", *tokens)


put("indexed_dataset", "uint16.bin", indexed([3, 0, 5]))
put("indexed_dataset", "int32-megatron-docs.bin", indexed([2, 2, 4], dtype=4, item=4, docs=[0, 2, 3]))
put("indexed_dataset", "float32.bin", indexed([4], dtype=7, item=4, tokens=[1.0, 2.0, 3.0, 4.5]))
put("indexed_dataset", "int64.bin", indexed([2, 1], dtype=5, item=8))
put("indexed_dataset", "truncated-bin.bin", indexed([3, 5])[:-4])


# safetensors (csrc/io/safetensors.h).
def safetensors(tensors, metadata=None):
    header, data = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - (8 + len(text)) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


put("safetensors", "two.safetensors", safetensors(
    {"a": ("F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4)), "b": ("I64", [3], struct.pack("<3q", 7, 8, 9))},
    {"format": "pt"}))
put("safetensors", "dtypes.safetensors", safetensors(
    {"h": ("F16", [2], b"\0<\0@"), "bf": ("BF16", [1], b"\x80?"), "u": ("U8", [3], b"abc"),
     "t": ("BOOL", [2], b"\1\0"), "d": ("F64", [1], struct.pack("<d", 0.5)), "i": ("I32", [0], b"")}))
put("safetensors", "bad-offsets.safetensors", safetensors({"a": ("F32", [2], struct.pack("<2f", 1, 2))})[:-3])

# manifest (trainer/checkpoint_manifest.h): a two-rank layout and near misses.
digest = hashlib.sha256(b"x").hexdigest()
manifest = {"format": "moetrain-checkpoint", "version": 1, "step": 2, "samples_consumed": 32, "tokens": 4096,
            "optimizer_step": 2, "layout": {"world": 2, "tp": 1, "ep": 2, "dp": 2},
            "model_digest": digest, "recipe_digest": digest, "model_section": "model { }", "recipe": "",
            "files": {"rank00000.safetensors": {"bytes": 1024, "sha256": digest},
                      "rank00001.safetensors": {"bytes": 1024, "sha256": digest}},
            "tensors": {"model/layers.0.moe.experts.w1": {"shape": [4, 8, 16], "dtype": "F32", "shards": [
                {"file": "rank00000.safetensors", "offsets": [0, 0, 0], "shape": [2, 8, 16]},
                {"file": "rank00001.safetensors", "offsets": [2, 0, 0], "shape": [2, 8, 16]}]},
                        "rng/cpu/rank00000": {"shape": [5056], "dtype": "U8", "shards": [
                            {"file": "rank00000.safetensors", "offsets": [0], "shape": [5056]}]}}}
put("manifest", "two-ranks.json", json.dumps(manifest, indent=1))
outside = json.loads(json.dumps(manifest))
outside["tensors"]["model/layers.0.moe.experts.w1"]["shards"][1]["offsets"] = [3, 0, 0]
put("manifest", "shard-outside.json", json.dumps(outside))
put("manifest", "version-2.json", json.dumps({**manifest, "version": 2}))

# sentencepiece: the small test corpus's tokenizer when it has been made, and a hand-built ModelProto.
small = os.path.join(SOURCE, "build", "test_corpus", "tokenizer.model")
if os.path.exists(small):
    with open(small, "rb") as f:
        put("sentencepiece", "test-corpus.model", f.read())


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(number, wire, payload):
    tag = varint(number << 3 | wire)
    if wire == 2:
        return tag + varint(len(payload)) + payload
    if wire == 0:
        return tag + varint(payload)
    return tag + payload


def piece(text, type_=1, score=0.0):
    return field(1, 2, text.encode()) + field(2, 5, struct.pack("<f", score)) + field(3, 0, type_)


proto = b"".join(field(1, 2, piece(t, ty)) for t, ty in
                 [("<unk>", 2), ("<s>", 3), ("</s>", 3), ("<pad>", 3), ("\u2581a", 1), ("b", 1), ("<0x41>", 6)])
proto += field(3, 2, field(1, 2, b"identity") + field(3, 0, 0))  # NormalizerSpec: add_dummy_prefix false
put("sentencepiece", "hand-built.model", proto)

# hf_config: one config.json per family (hf/families.h), small sizes.
base = {"vocab_size": 64, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
        "num_key_value_heads": 2, "intermediate_size": 8, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "hidden_act": "silu"}
put("hf_config", "mixtral.json", json.dumps({**base, "model_type": "mixtral", "num_local_experts": 4,
                                            "num_experts_per_tok": 2, "sliding_window": None}))
put("hf_config", "qwen2_moe.json", json.dumps({**base, "model_type": "qwen2_moe", "num_experts": 4, "num_experts_per_tok": 2,
                                              "moe_intermediate_size": 8, "shared_expert_intermediate_size": 16,
                                              "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": False}))
put("hf_config", "qwen3_moe.json", json.dumps({**base, "model_type": "qwen3_moe", "num_experts": 4, "num_experts_per_tok": 2,
                                              "moe_intermediate_size": 8, "head_dim": 8, "decoder_sparse_step": 1,
                                              "mlp_only_layers": [1], "norm_topk_prob": True}))
put("hf_config", "olmoe.json", json.dumps({**base, "model_type": "olmoe", "num_experts": 4, "num_experts_per_tok": 2,
                                          "norm_topk_prob": False}))
put("hf_config", "refused.json", json.dumps({**base, "model_type": "mixtral", "sliding_window": 4096,
                                            "rope_parameters": {"rope_type": "yarn"}}))
print("seeds written under", HERE, file=sys.stderr)
