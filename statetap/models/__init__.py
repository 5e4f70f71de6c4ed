"""statetap's own RWKV-5, -6 and -7 models, whose WKV calls :mod:`statetap.kernels` directly.

transformers-style classes (configuration, ``PreTrainedModel`` + ``GenerationMixin``, the
cache :class:`RwkvCache`) registered with the Auto classes under the model types
``statetap_rwkv5`` / ``statetap_rwkv6`` / ``statetap_rwkv7``, so a saved folder loads with
``AutoModelForCausalLM.from_pretrained(folder)`` once ``statetap.models`` is imported (as do
the ports' folders, :mod:`statetap.models.foreign_layouts`, and the World tokenizer).
:func:`from_blinkdl` loads BlinkDL's ``.pth`` checkpoints.  Unlike transformers' RWKV-4 the
models honour ``attention_mask``: a pad leaves every state untouched.

Example:
    >>> import torch, statetap
    >>> from statetap.models import Rwkv6Config, Rwkv6ForCausalLM
    >>> model = Rwkv6ForCausalLM(Rwkv6Config(vocab_size=50, hidden_size=16, num_hidden_layers=2,
    ...                                      head_size=8, mix_lora_rank=4, decay_lora_rank=4))
    >>> tap = statetap.attach(model.eval())
    >>> result = tap.run(torch.randint(0, 50, (2, 6)), emit=[statetap.Emit("wkv", 1, [0, -1])])
    >>> result["wkv", 1].shape
    torch.Size([2, 2, 2, 8, 8])
"""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

from statetap.models.blinkdl import config_from_blinkdl, from_blinkdl, from_blinkdl_state_dict
from statetap.models.cache import RwkvCache
from statetap.models.common import (
    RwkvBaseConfig,
    RwkvBaseForCausalLM,
    RwkvBaseModel,
    RwkvCausalLMOutput,
)
from statetap.models.rwkv5 import Rwkv5Config, Rwkv5ForCausalLM, Rwkv5Model
from statetap.models.rwkv6 import Rwkv6Config, Rwkv6ForCausalLM, Rwkv6Model
from statetap.models.rwkv7 import Rwkv7Config, Rwkv7ForCausalLM, Rwkv7Model
from statetap.models.world_tokenizer import RwkvWorldTokenizer

#: the statetap model classes (``statetap.attach`` serves these)
CAUSAL_LMS = (Rwkv5ForCausalLM, Rwkv6ForCausalLM, Rwkv7ForCausalLM)

for _config, _model, _lm in (
    (Rwkv5Config, Rwkv5Model, Rwkv5ForCausalLM),
    (Rwkv6Config, Rwkv6Model, Rwkv6ForCausalLM),
    (Rwkv7Config, Rwkv7Model, Rwkv7ForCausalLM),
):
    AutoConfig.register(_config.model_type, _config, exist_ok=True)
    AutoModel.register(_config, _model, exist_ok=True)
    AutoModelForCausalLM.register(_config, _lm, exist_ok=True)
    AutoTokenizer.register(_config, tokenizer_class=RwkvWorldTokenizer, exist_ok=True)

# the ports' model types (rwkv5, rwkv6, rwkv7 / rwkv7_fla folders) load into these classes
import statetap.models.foreign_layouts  # noqa: E402, F401

__all__ = [
    "CAUSAL_LMS",
    "Rwkv5Config",
    "Rwkv5ForCausalLM",
    "Rwkv5Model",
    "Rwkv6Config",
    "Rwkv6ForCausalLM",
    "Rwkv6Model",
    "Rwkv7Config",
    "Rwkv7ForCausalLM",
    "Rwkv7Model",
    "RwkvBaseConfig",
    "RwkvBaseForCausalLM",
    "RwkvBaseModel",
    "RwkvCache",
    "RwkvCausalLMOutput",
    "RwkvWorldTokenizer",
    "config_from_blinkdl",
    "from_blinkdl",
    "from_blinkdl_state_dict",
]
