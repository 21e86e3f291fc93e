"""transformers config for bunmind's canonical MiniMind format (`model_type: "minimind"`).

`bunmind export hf` writes this format, with this file and `modeling_bunmind_minimind.py` beside the weights, for
models no native transformers class computes (shared experts, MoE without q/k-norm, the seed v1's interleaved
RoPE, ...). Load it with `AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`.

Every key and default is the one bunmind reads (core-rs/engine/src/model/config.rs `ModelConfig`, hf.rs
`import_minimind`). Two RoPE keys mean different things here than in transformers:

- `rope_scaling`: MiniMind's YaRN dict (factor, original_max_position_embeddings, beta_fast, beta_slow,
  attention_factor); `inference_rope_scaling: true` with no `rope_scaling` means MiniMind's default one.
- `rope_parameters`: transformers' linear / llama3 / yarn scaling (a dict with `rope_type`).

transformers 5 treats `rope_scaling` as an alias of `rope_parameters`; this class keeps them apart.
"""
from transformers import PretrainedConfig

# key → default, as bunmind's importer fills them in (head_dim and moe_intermediate_size are derived below)
_DEFAULTS = {
    "hidden_size": 768,
    "num_hidden_layers": 8,
    "num_attention_heads": 8,
    "num_key_value_heads": None,
    "head_dim": None,
    "intermediate_size": 2432,
    "moe_intermediate_size": None,
    "vocab_size": 6400,
    "rms_norm_eps": 1e-6,
    "rope_theta": 1e6,
    "max_position_embeddings": 32768,
    "hidden_act": "silu",
    "dropout": 0.0,
    "use_moe": False,
    "num_experts": 4,
    "num_experts_per_tok": 1,
    "n_shared_experts": 0,
    "norm_topk_prob": True,
    "router_aux_loss_coef": 5e-4,
    "qk_norm": False,
    "rope_interleaved": False,
    "rope_scaling": None,
    "inference_rope_scaling": False,
    "rope_parameters": None,
    "qkv_bias": False,
    "o_bias": False,
    "mlp_bias": False,
}


class MiniMindConfig(PretrainedConfig):
    model_type = "minimind"
    keys_to_ignore_at_inference = ["past_key_values"]
    # Plain attributes here, shadowing transformers 5's `rope_scaling` property (an alias of `rope_parameters`).
    rope_scaling = None
    rope_parameters = None

    def __init__(self, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=None, **kwargs):
        values = {k: kwargs.pop(k, d) for k, d in _DEFAULTS.items()}
        if values["hidden_act"] != "silu":
            raise ValueError(f"hidden_act {values['hidden_act']!r}: this model's MLP is SwiGLU (silu)")
        super().__init__(
            tie_word_embeddings=tie_word_embeddings,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            **kwargs,
        )
        # Set after the base __init__, which (in transformers 5) would fold the RoPE keys into one.
        for k, v in values.items():
            setattr(self, k, v)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.rope_parameters:
            # transformers 5's layout keeps rope_theta in the dict (and its save_pretrained requires it there);
            # bunmind reads the dict's value first, as here.
            self.rope_parameters = dict(self.rope_parameters)
            self.rope_theta = self.rope_parameters.setdefault("rope_theta", self.rope_theta)
        if self.moe_intermediate_size is None:
            self.moe_intermediate_size = self.intermediate_size
        self.tie_word_embeddings = tie_word_embeddings
        self.bos_token_id, self.eos_token_id, self.pad_token_id = bos_token_id, eos_token_id, pad_token_id
