"""Helpers for the interop tests: tiny random Hugging Face models (built from configs, never
downloaded) and a real S3 API server on loopback (moto in server mode)."""

import contextlib
import logging
import os
import urllib.request
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
                              max_position_embeddings=64)}
    defaults["qwen2"] = defaults["llama"]
    defaults = defaults[model_type]
    cfg = AutoConfig.for_model(model_type, vocab_size=vocab, bos_token_id=None,
                               eos_token_id=None, pad_token_id=None, **{**defaults, **config})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.save_pretrained(out)
    fast = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer), eos_token="<|endoftext|>",
                                   pad_token="<|pad|>")
    fast.save_pretrained(out)
    return out


class MotoServer:
    """A moto S3 server on 127.0.0.1 that can go down and come back on the same port.

    `stop()` closes the listening socket too (moto's own stop leaves it open, so clients would
    hang instead of being refused, which is not what a stopped server looks like). The objects
    survive a restart: moto keeps them in this process, as a real server keeps them on disk."""

    def __init__(self, port: int = 0):
        self.port, self._server = port, None

    def start(self) -> "MotoServer":
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.port = self._server.get_host_and_port()[1]
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def moto_s3_server(bucket: str = "bucket", **extra_env):
    """(environment, MotoServer): a moto S3 server with one bucket, and the environment that
    points boto/s3fs at it (dummy credentials, AWS_ENDPOINT_URL, plus `extra_env`)."""
    import boto3
    from s3fs import S3FileSystem

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = MotoServer().start()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_SESSION_TOKEN": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": server.url, "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null", "AWS_EC2_METADATA_DISABLED": "true",
           **extra_env}
    clear = S3FileSystem.clear_instance_cache  # fsspec reuses clients made for another server
    try:
        with _environ(env):
            clear()
            # moto keeps its objects per process, not per server: start from an empty store
            urllib.request.urlopen(urllib.request.Request(f"{server.url}/moto-api/reset",
                                                          method="POST")).close()
            boto3.client("s3").create_bucket(Bucket=bucket)
            yield env, server
    finally:
        server.stop()
        clear()


@contextlib.contextmanager
def moto_s3(bucket: str = "bucket", **extra_env):
    """A moto S3 server on 127.0.0.1 (free port) with one bucket; yields its environment."""
    with moto_s3_server(bucket, **extra_env) as (env, _):
        yield env


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
