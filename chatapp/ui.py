"""The Chat tab: streamed, cited answers with the reasoning folded away and a sources panel.

Everything that came from a document or from the model is HTML-escaped before it reaches the page:
a web page with a <script> in it is shown as text and never runs.
"""
from __future__ import annotations

import base64
import html
import logging

import gradio as gr

from chatapp import prompts, rag
from chatapp.model import BASE, GenerationSettings
from chatapp.settings import Settings
from loaders.pages import highlighted_page

log = logging.getLogger("chatapp.ui")

MODEL_WORDS_SHOWN = 240  # characters of a replaced answer shown under the quote (a looping reply runs far longer)
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


def marked_passage(source: rag.Source) -> str:
    """The passage as escaped text with its quote's spans in <mark>."""
    parts, position = [], 0
    for start, end in sorted(source.quote_spans):
        parts += [html.escape(source.text[position:start]), f"<mark>{html.escape(source.text[start:end])}</mark>"]
        position = end
    parts.append(html.escape(source.text[position:]))
    return "".join(parts)


def page_picture(store, source: rag.Source) -> str:
    """An <img> of the PDF page with the quote highlighted, or "" (not a PDF, or no stored copy)."""
    original = store.original(source.sha256) if store is not None and source.page and source.kind == "pdf" else None
    if original is None:
        return ""
    try:
        jpeg = highlighted_page(original, source.page, [source.text[a:b] for a, b in source.quote_spans])
    except Exception:  # a damaged copy: the passage is still shown as text
        log.exception("rendering %s p. %s failed", source.source, source.page)
        return ""
    data = base64.b64encode(jpeg).decode()
    return (f'<details class="chat-page"><summary>Page {source.page} with the quote highlighted</summary>'
            f'<img class="chat-page-image" alt="{html.escape(source.source)} p. {source.page}" '
            f'src="data:image/jpeg;base64,{data}" style="max-width: 100%"></details>')


def sources_html(answer: rag.Answer | None, store=None) -> str:
    if answer is None:
        return EMPTY_SOURCES
    if answer.status == "small_talk":
        return _sources_note("No sources: small talk.")
    if answer.status == "empty_store":
        return _sources_note("No sources: no documents are stored yet (Documents tab).")
    if answer.status == "waiting":
        return PENDING_SOURCES
    if not answer.sources:
        return _sources_note("No sources: nothing in the documents scored above the relevance threshold.")
    items = []
    for source in answer.sources:
        where = f" · {html.escape(source.location)}" if source.location else ""
        title = f" — {html.escape(source.title)}" if source.title and source.title != source.source else ""
        quote = f'<blockquote class="chat-quote">{html.escape(source.quote)}</blockquote>' if source.quote else ""
        items.append(
            '<div class="chat-source">'
            f"<div>[{source.number}] <b>{html.escape(source.source)}</b>{where}{title}"
            f' <span class="chat-score">score {source.score:.2f}</span></div>{quote}'
            f'<details class="chat-passage-box"><summary>Whole passage</summary>'
            f'<div class="chat-passage" style="white-space: pre-wrap">{marked_passage(source)}</div></details>'
            f"{page_picture(store, source)}</div>"
        )
    flagged = ""
    if answer.unsupported:
        flagged = ('<div class="chat-unsupported">⚠ Not in any source: '
                   f'{html.escape(", ".join(answer.unsupported))}</div>')
    return f'<div class="chat-sources">{flagged}<div><b>Sources</b></div>{"".join(items)}</div>'


def answer_messages(answer: rag.Answer) -> list[dict]:
    """The assistant's part of the conversation: folded reasoning (when there is any), then the answer,
    then, when the model stated what no source holds, that flag and the model's own words."""
    messages = []
    if answer.reasoning:
        status = "done" if (answer.answer or answer.done) else "pending"
        messages.append(
            {"role": "assistant", "content": html.escape(answer.reasoning), "metadata": {"title": "Reasoning", "status": status}}
        )
    if answer.answer or answer.done:
        text = html.escape(answer.answer or "(no answer)")
        wrote = answer.model_answer if len(answer.model_answer) <= MODEL_WORDS_SHOWN else answer.model_answer[:MODEL_WORDS_SHOWN].rstrip() + "…"
        said = f"The model wrote: “{html.escape(wrote)}”; the source is quoted instead." if answer.model_answer else ""
        if answer.done and answer.unsupported:
            text += f"\n\n⚠ Not in any source: {html.escape(', '.join(answer.unsupported))}. {said}".rstrip()
        elif answer.done and said:
            text += f"\n\n⚠ {said}"
        messages.append({"role": "assistant", "content": text})
    return messages


def build_chat_tab(settings: Settings, registry, store) -> dict:
    """Build the Chat tab's components inside the caller's `gr.Tab`; returns them by name."""
    info = gr.Markdown(lambda: model_line(registry), elem_id="model-info")
    # The model loads in the background after the page is up: the line follows it, then the timer stops.
    model_timer = gr.Timer(1.0, active=registry.base is None)
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
                yield history + answer_messages(latest), "", sources_html(latest, store) if latest.done else gr.skip(), gr.skip()
            yield history + answer_messages(latest), "", sources_html(latest, store), model_line(registry)
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
    model_timer.tick(lambda: (model_line(registry), gr.Timer(active=registry.base is None)), None, [info, model_timer],
                     queue=False, show_progress="hidden")

    return {
        "chatbot": chatbot, "question": question, "send": send, "clear": clear, "sources": sources,
        "variant": variant, "style": style, "info": info, "refresh_variants": refresh_variants,
    }
