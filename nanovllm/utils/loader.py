"""Loading a (sharded) safetensors checkpoint into the model, through each parameter's weight loader."""
import glob
import json
import os

import torch
from safetensors import SafetensorError, safe_open
from torch import nn


def copy_weight(param: torch.Tensor, loaded: torch.Tensor) -> None:
    """param <- loaded, of exactly its shape (copy_ alone would broadcast a wrong one)."""
    if tuple(loaded.shape) != tuple(param.shape):
        raise ValueError(f"checkpoint shape {tuple(loaded.shape)}, model {tuple(param.shape)}")
    param.copy_(loaded)


def load_model(model: nn.Module, path: str) -> None:
    """Copy a safetensors checkpoint (one file or shards) into `model`, fusing q/k/v and gate/up on the way; a
    parameter with a `weight_loader` (the layers split across tensor-parallel ranks) takes its own share."""
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        # The index names the shards; other *.safetensors files (e.g. Mistral's consolidated.safetensors) differ.
        with open(index) as f:
            files = sorted({os.path.join(path, file) for file in json.load(f)["weight_map"].values()})
    else:
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in model_path {path!r}")
    # Tied embeddings: lm_head.weight is listed too, as the same tensor as embed_tokens.weight.
    params = dict(model.named_parameters(remove_duplicate=False))
    packed = getattr(model, "packed_modules_mapping", {})
    loaded = set()
    device = str(next(model.parameters()).device)
    for file in files:
        try:
            opened = safe_open(file, "pt", device)
        except (SafetensorError, OSError) as e:  # a damaged or truncated file: its error names no file
            raise ValueError(f"cannot read the weights file {file}: {e}") from None
        with opened as f:
            for name in f.keys():
                if "rotary_emb.inv_freq" in name:
                    continue
                target, shard_id = name, None
                for ckpt_name, (our_name, shard) in packed.items():
                    if f".{ckpt_name}." in name:
                        target, shard_id = name.replace(ckpt_name, our_name), shard
                        break
                if target not in params:
                    raise KeyError(f"checkpoint tensor {name!r} in {file} has no place in {type(model).__name__}")
                param = params[target]
                tensor = f.get_tensor(name)
                loader = getattr(param, "weight_loader", None)
                try:
                    if shard_id is not None:
                        loader(param, tensor, shard_id)
                    elif loader is not None:
                        loader(param, tensor)
                    else:
                        copy_weight(param.data, tensor)
                except ValueError as e:
                    raise ValueError(f"{name}: {e}") from None
                loaded.add(id(param))
    missing = [n for n, p in params.items() if id(p) not in loaded]
    if missing:
        raise ValueError(f"checkpoint {path!r} lacks weights for {missing[:5]}")
