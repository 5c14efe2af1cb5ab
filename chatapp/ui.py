"""The Chat tab: streamed, cited answers with the reasoning folded away and a sources panel.

Everything that came from a document or from the model is HTML-escaped before it reaches the page:
a web page with a <script> in it is shown as text and never runs.
"""
from __future__ import annotations

import html
import logging

import gradio as gr

from chatapp import prompts, rag
from chatapp.model import BASE, GenerationSettings
from chatapp.settings import Settings

log = logging.getLogger("chatapp.ui")

STYLE_CHOICES = [(label, key) for key, label in prompts.STYLES.items()]


def _sources_note(text: str) -> str:
    """The sources panel when it lists no passage: one line saying why."""
    return f'<div class="chat-sources-empty">{text}</div>'


EMPTY_SOURCES = _sources_note("Sources for the latest answer appear here.")
# Shown while an answer streams, so the last answer's sources never sit beside the new one.
PENDING_SOURCES = _sources_note("Sources appear when this answer is complete.")


def model_line(registry) -> str:
    """The loaded base, its precision and weights footprint; never blocks on a load in progress."""
    if registry.base is None:
        return "Model: loading (the first answer waits for it)…"
    info = registry.info()
    name = html.escape(str(info["base"]).rstrip("/").split("/")[-1])
    if info.get("url"):  # generated on an OpenAI-compatible server (chatapp/remote.py)
        return f"Model: **{name}** · served by {html.escape(info['url'])}"
    return f"Model: **{name}** · precision **{info['precision']}** · weights **{info['footprint_mb']:.0f} MB** · {info['device']}"


def sources_html(answer: rag.Answer | None) -> str:
    if answer is None:
        return EMPTY_SOURCES
    if answer.status == "small_talk":
        return _sources_note("No sources: small talk.")
    if not answer.sources:
        return _sources_note("No sources: nothing in the documents scored above the relevance threshold.")
    items = []
    for source in answer.sources:
        where = f" · {html.escape(source.location)}" if source.location else ""
        title = f" — {html.escape(source.title)}" if source.title and source.title != source.source else ""
        items.append(
            '<details class="chat-source">'
            f"<summary>[{source.number}] <b>{html.escape(source.source)}</b>{where}{title}"
            f' <span class="chat-score">score {source.score:.2f}</span></summary>'
            f'<div class="chat-passage" style="white-space: pre-wrap">{html.escape(source.text)}</div>'
            "</details>"
        )
    return f'<div class="chat-sources"><div><b>Sources</b></div>{"".join(items)}</div>'


def answer_messages(answer: rag.Answer) -> list[dict]:
    """The assistant's part of the conversation: folded reasoning (when there is any), then the answer."""
    messages = []
    if answer.reasoning:
        status = "done" if (answer.answer or answer.done) else "pending"
        messages.append(
            {"role": "assistant", "content": html.escape(answer.reasoning), "metadata": {"title": "Reasoning", "status": status}}
        )
    if answer.answer or answer.done:
        messages.append({"role": "assistant", "content": html.escape(answer.answer or "(no answer)")})
    return messages


def build_chat_tab(settings: Settings, registry, store) -> dict:
    """Build the Chat tab's components inside the caller's `gr.Tab`; returns them by name."""
    info = gr.Markdown(lambda: model_line(registry), elem_id="model-info")
    with gr.Row():
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(elem_id="chatbot", label="Chat", height=480, sanitize_html=True, buttons=["copy"])
            with gr.Row():
                question = gr.Textbox(
                    elem_id="chat-input", placeholder="Ask about your documents…", show_label=False, scale=5, lines=1
                )
                send = gr.Button("Send", elem_id="chat-send", variant="primary", scale=1)
                clear = gr.Button("Clear", elem_id="clear", scale=1)
            sources = gr.HTML(EMPTY_SOURCES, elem_id="sources")
        with gr.Column(scale=1):
            variant = gr.Dropdown(choices=registry.variants(), value=BASE, label="Variant", elem_id="variant")
            style = gr.Dropdown(choices=STYLE_CHOICES, value="cot", label="Prompt style", elem_id="prompt-style")
            with gr.Accordion("Generation settings", open=False):
                defaults = GenerationSettings()
                max_new_tokens = gr.Slider(16, 1024, value=defaults.max_new_tokens, step=16, label="Max new tokens", elem_id="max-new-tokens")
                do_sample = gr.Checkbox(value=defaults.do_sample, label="Sample (off = greedy)", elem_id="do-sample")
                temperature = gr.Slider(0.05, 2.0, value=defaults.temperature, step=0.05, label="Temperature", elem_id="temperature")
                top_k = gr.Slider(1, 200, value=defaults.top_k, step=1, label="Top-k", elem_id="top-k")
                top_p = gr.Slider(0.05, 1.0, value=defaults.top_p, step=0.05, label="Top-p", elem_id="top-p")

    def refresh_variants(current):
        choices = registry.variants()  # rescans the adapters folder: new adapters need no restart
        return gr.Dropdown(choices=choices, value=current if current in choices else BASE)

    def respond(message, history, variant_name, style_name, max_new, sample, temp, k_top, p_top):
        history = list(history or [])
        message = (message or "").strip()
        if not message:
            yield history, gr.skip(), gr.skip(), gr.skip()
            return
        generation = GenerationSettings(int(max_new), bool(sample), float(temp), int(k_top), float(p_top))
        # The chatbot holds escaped text; the model and the retriever get it back as typed.
        prior = [{**turn, "content": html.unescape(turn["content"])} for turn in rag.text_history(history)]
        history.append({"role": "user", "content": html.escape(message)})
        yield history, "", PENDING_SOURCES, gr.skip()
        try:
            latest = None
            for latest in rag.answer(
                message, prior, store=store, registry=registry, variant=variant_name or BASE,
                style=style_name or "cot", generation=generation, settings=settings,
            ):
                yield history + answer_messages(latest), "", sources_html(latest) if latest.done else gr.skip(), gr.skip()
            yield history + answer_messages(latest), "", sources_html(latest), model_line(registry)
        except (KeyError, ValueError) as exc:  # an adapter deleted meanwhile, a bad setting
            raise gr.Error(str(exc).strip("'\""), print_exception=False) from None
        except Exception as exc:
            log.exception("answering failed")
            raise gr.Error(f"answering failed: {exc}", print_exception=False) from None

    inputs = [question, chatbot, variant, style, max_new_tokens, do_sample, temperature, top_k, top_p]
    outputs = [chatbot, question, sources, info]
    for trigger in (send.click, question.submit):
        trigger(respond, inputs, outputs, concurrency_limit=1, concurrency_id="generation")
    clear.click(lambda: ([], EMPTY_SOURCES, ""), None, [chatbot, sources, question], queue=False)
    variant.focus(refresh_variants, variant, variant, queue=False)

    return {
        "chatbot": chatbot, "question": question, "send": send, "clear": clear, "sources": sources,
        "variant": variant, "style": style, "info": info, "refresh_variants": refresh_variants,
    }
