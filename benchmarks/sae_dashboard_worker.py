"""SAEDashboard (sae-dashboard, on SAELens and TransformerLens) as a peer of
`actlab bench latents`, run by the Python of the virtual environment the
benchmark made for it (never actlab's): it imports nothing from actlab.
Prints one JSON line: seconds and CPU seconds of SaeVisRunner.run, and each
feature's maximum activation (to check that both read the same numbers).

python sae_dashboard_worker.py SPEC.json

SPEC.json: model_dir (a Hugging Face folder), sae_dir (an SAELens folder),
tokens (windows x context token ids: the windows actlab's pass reads),
features (latent ids), minibatch_size_features, minibatch_size_tokens,
ignore_tokens (the BOS, which actlab leaves out).
"""

import json
import sys
import tempfile
import time
import warnings
from pathlib import Path


def hooked_model(model_dir: str):
    """A HookedSAETransformer with the folder's weights, built in process (no hub)."""
    import torch
    import transformer_lens.loading_from_pretrained as loading
    from sae_lens import HookedSAETransformer
    from transformer_lens import HookedTransformerConfig
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    with tempfile.TemporaryDirectory() as folder:  # a name without "llama": TransformerLens reads the config
        config = hf.config.to_dict()
        (Path(folder) / "config.json").write_text(json.dumps(config))
        cfg = HookedTransformerConfig(**loading.convert_hf_model_config(folder), device="cpu", dtype=torch.float32)
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        warnings.simplefilter("ignore")
        model = HookedSAETransformer(cfg, tokenizer=tokenizer(model_dir, folder))
    converter = {"llama": loading.convert_llama_weights, "mistral": loading.convert_mistral_weights,
                 "qwen2": loading.convert_qwen2_weights, "gpt2": loading.convert_gpt2_weights}[hf.config.model_type]
    model.load_and_process_state_dict(converter(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False,
                                      refactor_factored_attn_matrices=False)
    return model.eval()


def tokenizer(model_dir: str, folder: str):
    """The folder's fast tokenizer re-saved into `folder` and loaded from there (a folder saved by a newer
    transformers names a tokenizer class this one lacks; TransformerLens reloads it by its path)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    config = json.loads((Path(model_dir) / "tokenizer_config.json").read_text())
    special = {k: v for k, v in config.items() if k in ("bos_token", "eos_token", "pad_token", "unk_token")
               and isinstance(v, str)}
    PreTrainedTokenizerFast(tokenizer_file=str(Path(model_dir) / "tokenizer.json"), **special).save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def main() -> None:
    import torch
    from sae_dashboard.sae_vis_data import SaeVisConfig
    from sae_dashboard.sae_vis_runner import SaeVisRunner
    from sae_lens import SAE

    torch.set_num_threads(1)
    spec = json.loads(Path(sys.argv[1]).read_text())
    model = hooked_model(spec["model_dir"])
    sae = SAE.load_from_disk(spec["sae_dir"], device="cpu")
    tokens = torch.tensor(spec["tokens"], dtype=torch.long)
    cfg = SaeVisConfig(hook_point=sae.cfg.metadata.hook_name, features=spec["features"],
                       minibatch_size_features=spec["minibatch_size_features"],
                       minibatch_size_tokens=spec["minibatch_size_tokens"], ignore_tokens=set(spec["ignore_tokens"]),
                       device="cpu", verbose=False)
    wall, cpu = time.perf_counter(), time.process_time()
    data = SaeVisRunner(cfg).run(encoder=sae, model=model, tokens=tokens)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(json.dumps({"seconds": wall, "cpu_seconds": cpu, "features": len(spec["features"]),
                      "max": [float(v) for v in data.feature_stats.max]}))


if __name__ == "__main__":
    main()
