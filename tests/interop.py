"""Helpers for the interop tests: tiny random Hugging Face models (built from configs, never
downloaded) and a real S3 API server on loopback (moto in server mode)."""

import contextlib
import logging
import os
from pathlib import Path

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
os.environ.update(OFFLINE)  # nothing in these tests may reach the network

HF_GPT2 = '''[model]
family = "hf"
config = {model_type = "gpt2", n_layer = 1, n_embd = 32, n_head = 2, n_positions = 64}
'''
HF_LLAMA = '''[model]
family = "hf"
[model.config]
model_type = "llama"
num_hidden_layers = 1
hidden_size = 32
intermediate_size = 64
num_attention_heads = 2
num_key_value_heads = 1
max_position_embeddings = 64
'''


def make_hf_model(tokenizer: Path, out: Path, model_type: str = "gpt2", seed: int = 0,
                  extra_vocab: int = 0, **config) -> Path:
    """A tiny random causal LM saved with save_pretrained, plus a fast tokenizer wrapping the
    repo's tiny tokenizer.json. `extra_vocab` pads the embeddings past the tokenizer, as real
    models do."""
    import torch
    from tokenizers import Tokenizer
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    vocab = Tokenizer.from_file(str(tokenizer)).get_vocab_size() + extra_vocab
    defaults = {"gpt2": dict(n_layer=1, n_embd=32, n_head=2, n_positions=64),
                "llama": dict(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                              num_attention_heads=2, num_key_value_heads=1,
                              max_position_embeddings=64)}[model_type]
    cfg = AutoConfig.for_model(model_type, vocab_size=vocab, bos_token_id=None,
                               eos_token_id=None, pad_token_id=None, **{**defaults, **config})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(out)
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer), eos_token="<|endoftext|>",
                                   pad_token="<|pad|>")
    fast.save_pretrained(out)
    return out


@contextlib.contextmanager
def moto_s3(bucket: str = "bucket", **extra_env):
    """A moto S3 server on 127.0.0.1 (free port) with one bucket; yields the environment that
    points boto/s3fs at it (dummy credentials, AWS_ENDPOINT_URL, plus `extra_env`)."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true",
           **extra_env}
    try:
        with _environ(env):
            boto3.client("s3").create_bucket(Bucket=bucket)
            yield env
    finally:
        server.stop()


@contextlib.contextmanager
def _environ(values: dict):
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
