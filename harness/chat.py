"""``python -m harness.chat``: a terminal chat whose history is kept in a δ-mem state.

    python -m harness.chat                                  # embedded SmolLM2-135M + the shipped MSW adapter
    python -m harness.chat --window 0 --memory chat.safetensors    # history removed; resume / save there
    python -m harness.chat --backbone local --backbone-path DIR --adapter ADAPTER_DIR

Every user message and reply is written into the state; the prompt holds only the last ``--window`` exchanges
(0: none), so anything older reaches the model only through the memory (see ``harness/chat_memory.py``).
Replies are greedy and streamed token by token. One line of input is one message; lines starting with ``/``
are commands (``/help``). It reads stdin line by line and needs no terminal, so a conversation can be piped
in; without a terminal each input line is echoed after the prompt, so the output reads as a transcript.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import IO, Sequence

import torch

from harness.errors import HarnessError

HELP = """commands:
  /save [FILE]   write the memory (state + transcript) to FILE (default: the --memory file)
  /load FILE     replace the memory with FILE (refused if written with another adapter or backbone)
  /reset         empty the memory and forget the transcript
  /window N      keep the last N exchanges in the prompt (0: history only in the memory)
  /stats         tokens written, state size and norm per layer
  /quit          leave (end of input does the same)"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m harness.chat", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=HELP)
    p.add_argument("--backbone", default="smollm2_135m",
                   help="a conf/backbone name (default: smollm2_135m, the embedded model)")
    p.add_argument("--backbone-path", default=None, help="local model folder (with --backbone local)")
    p.add_argument("--adapter", default="shipped",
                   help="shipped (default), an adapter directory (own or official format), or null (untrained)")
    p.add_argument("--variant", default="msw", choices=("msw", "tsw", "ssw"),
                   help="which shipped adapter, or the untrained memory's shape (default: msw)")
    p.add_argument("--output-init", default="base_slice_fixed",
                   help="an untrained memory's correction heads (default: base_slice_fixed, the reference's)")
    p.add_argument("--seed", type=int, default=0, help="initialisation seed of an untrained memory")
    p.add_argument("--window", type=int, default=2, help="exchanges kept in the prompt (default: 2)")
    p.add_argument("--memory", default=None, metavar="FILE",
                   help="resume the memory saved in FILE (if it exists); /save writes there by default")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--device", default=None, help="cpu, cuda:0, ... (default: the backbone config's)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--save-logits", default=None, metavar="FILE",
                   help="on exit, write every reply's per-step logits to FILE (safetensors; for checks)")
    return p.parse_args(argv)


def load_chat(args: argparse.Namespace):
    from omegaconf import OmegaConf

    from harness.backbone import load_backbone
    from harness.chat_memory import ChatMemory
    from harness.deltamem_loading import BACKBONE_CONF, attach_memory

    conf = BACKBONE_CONF / f"{args.backbone}.yaml"
    if "/" in args.backbone or not conf.is_file():
        have = ", ".join(sorted(p.stem for p in BACKBONE_CONF.glob("*.yaml")))
        raise HarnessError(f"--backbone {args.backbone}: no conf/backbone/{args.backbone}.yaml (have: {have}); "
                           "for a local folder use --backbone local --backbone-path DIR")
    cfg = OmegaConf.load(conf)
    if args.backbone_path:
        cfg.path = args.backbone_path
        if args.backbone == "local":
            cfg.name = Path(args.backbone_path).name
    if args.device:
        cfg.device = args.device
    bb = load_backbone(cfg)
    memory = attach_memory(bb.model, args.adapter, variant=args.variant, output_init=args.output_init,
                           seed=args.seed, backbone_name=None if args.backbone == "local" else bb.name)
    bb.model.eval()
    return ChatMemory(bb, memory, window=args.window, max_new_tokens=args.max_new_tokens)


def make_streamer(tokenizer, out: IO[str]):
    """transformers' TextStreamer, writing the reply to ``out`` as it is generated."""
    from transformers import TextStreamer

    class _To(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return _To(tokenizer, skip_prompt=True, skip_special_tokens=True)


def run(chat, lines: IO[str], out: IO[str], *, memory_file: str | None = None, echo: bool = False,
        logits: list[torch.Tensor] | None = None) -> None:
    """The read–reply loop over ``lines`` until /quit or end of input."""
    from harness.chat_memory import StateMismatch, format_stats

    def say(text: str) -> None:
        out.write(f"[chat] {text}\n")
        out.flush()

    while True:
        out.write("you> ")
        out.flush()
        line = lines.readline()
        if not line:
            out.write("\n")
            return
        text = line.rstrip("\n")
        if echo:
            out.write(text + "\n")
        if not text.strip():
            continue
        if text.startswith("/"):
            cmd, _, arg = text.strip().partition(" ")
            arg = arg.strip()
            if cmd == "/quit":
                return
            if cmd == "/help":
                out.write(HELP + "\n")
            elif cmd == "/reset":
                chat.reset()
                say("memory emptied, transcript forgotten")
            elif cmd == "/window":
                try:
                    chat.set_window(int(arg))
                    say(f"window: the last {chat.window} exchange(s) in the prompt")
                except ValueError:
                    say("usage: /window N  (N >= 0)")
            elif cmd == "/stats":
                format_stats(chat.stats(), out)
            elif cmd in ("/save", "/load"):
                target = arg or memory_file
                if not target:
                    say(f"usage: {cmd} FILE")
                    continue
                try:
                    if cmd == "/save":
                        path = chat.save(target)
                        say(f"saved to {path} ({chat.tokens_written} tokens written, {len(chat.history)} exchanges)")
                    else:
                        chat.load(target)
                        say(f"loaded {target} ({chat.tokens_written} tokens written, {len(chat.history)} exchanges)")
                except (StateMismatch, OSError) as exc:
                    say(f"{cmd[1:]} failed: {exc}")
            else:
                say(f"unknown command {cmd}; /help lists them")
            continue
        out.write("bot> ")
        out.flush()
        reply = chat.reply(text, streamer=make_streamer(chat.backbone.tokenizer, out))
        if logits is not None:
            logits.append(reply.logits)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # generation-config notices would interleave with the streamed reply
    from harness.chat_memory import StateMismatch

    try:
        chat = load_chat(args)
        if args.memory and Path(args.memory).expanduser().exists():
            chat.load(args.memory)
            resumed = f"resumed {args.memory} ({chat.tokens_written} tokens written, {len(chat.history)} exchanges)"
        else:
            resumed = "empty memory"
    except (HarnessError, StateMismatch, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[chat] {chat.backbone.name} + {chat.memory.label}; {resumed}; window {chat.window}. /help for commands.",
          flush=True)
    logits: list[torch.Tensor] | None = [] if args.save_logits else None
    try:
        run(chat, sys.stdin, sys.stdout, memory_file=args.memory, echo=not sys.stdin.isatty(), logits=logits)
    except KeyboardInterrupt:
        print()
    if args.save_logits and logits is not None:
        from safetensors.torch import save_file

        save_file({f"reply.{i}": t.contiguous() for i, t in enumerate(logits)}, args.save_logits)
    return 0


if __name__ == "__main__":
    sys.exit(main())
