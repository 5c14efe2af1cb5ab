"""The Chat tab: streamed, cited answers with the reasoning folded away, a sources panel, and the saved
conversations (chatapp/conversations.py): listed newest first, reopened, renamed, deleted, exported.

Everything that came from a document or from the model is HTML-escaped before it reaches the page:
a web page with a <script> in it is shown as text and never runs.
"""
from __future__ import annotations

import base64
import html
import logging
import re
import sqlite3
import tempfile
import threading
from pathlib import Path

import gradio as gr

from chatapp import prompts, rag
from chatapp.access import kept_secret
from chatapp.conversations import Conversation, Conversations, Turn
from chatapp.generation import GenerationSettings
from chatapp.model import BASE
from chatapp.settings import Settings
from loaders.pages import email_attachment, highlighted_page, picture_page

log = logging.getLogger("chatapp.ui")

MODEL_WORDS_SHOWN = 240  # characters of a replaced answer shown under the quote (a looping reply runs far longer)
STYLE_CHOICES = [(label, key) for key, label in prompts.STYLES.items()]


def _sources_note(text: str) -> str:
    """The sources panel when it lists no passage: one line saying why."""
    return f'<div class="chat-sources-empty">{text}</div>'


EMPTY_SOURCES = _sources_note("Sources for the latest answer appear here.")
# Shown while an answer streams, so the last answer's sources never sit beside the new one.
PENDING_SOURCES = _sources_note("Sources appear when this answer is complete.")
NEW_CHAT = "new"  # what the browser remembers while the page shows a new, unsaved chat (see `remembered`)


def still_loading(registry) -> bool:
    """The base is being loaded, and no load has failed: the model line is worth polling."""
    return registry.base is None and not registry.load_error


def model_line(registry) -> str:
    """The loaded base, its precision and weights footprint, or why it could not be loaded; never blocks on a
    load in progress."""
    if registry.base is None and registry.load_error:
        wanted = registry.settings.llm_url or registry.settings.base_model
        reason = html.escape(registry.load_error, quote=False)
        return (f"Model: **{html.escape(str(wanted))}** could not be loaded: {reason} "
                "(set CHATAPP_BASE_MODEL to a local folder, a Hugging Face id the machine can reach, or `embedded`;"
                " CHATAPP_LLM_URL to a running server). Each question tries again.")
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
    """An <img> of the PDF page with the quote highlighted (a PDF's own, or one attached to an e-mail), or of
    the picture OCR read; "" for other kinds or when no copy is stored."""
    page = source.attachment_page if source.kind == "email" else source.page
    if store is None or (source.kind in ("pdf", "email") and not page):
        return ""
    original = store.original(source.sha256, kind=source.kind)  # None for kinds whose copy is not kept
    if original is None:
        return ""
    quotes = [source.text[a:b] for a, b in source.quote_spans]
    try:
        if source.kind == "pdf":
            jpeg = highlighted_page(original, page, quotes)
        elif source.kind == "email":
            attached = email_attachment(original.read_bytes(), source.attachment)
            if attached is None:
                return ""
            jpeg = highlighted_page(attached, page, quotes)
        else:
            jpeg = picture_page(original, page or 1)
    except Exception:  # a damaged copy: the passage is still shown as text
        log.exception("rendering %s p. %s failed", source.source, page)
        return ""
    data = base64.b64encode(jpeg).decode()
    inside = f" of {html.escape(source.attachment)}" if source.attachment else ""
    summary = ("The picture this text was read from by OCR" if source.kind == "image"
               else f"Page {page}{inside} with the quote highlighted")
    where = f" p. {page}" if page else ""
    return (f'<details class="chat-page"><summary>{summary}</summary>'
            f'<img class="chat-page-image" alt="{html.escape(source.source)}{where}" '
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
    if answer.unmentioned:
        return _sources_note(f"No sources: no document mentions {' or '.join(answer.unmentioned)}.")
    if not answer.sources:
        return _sources_note("No sources: the documents don't cover this question.")
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


def user_of(request: gr.Request | None) -> str:
    """Whose conversations these are: the login's user name, or "" when the page has no login."""
    return (request.username if request is not None else None) or ""


def stored_answer(turn: Turn) -> rag.Answer:
    """A saved turn as the finished Answer the page drew, to draw it again."""
    return rag.Answer(turn.question, standalone_question=turn.standalone_question, answer=turn.answer,
                      reasoning=turn.reasoning, sources=[rag.Source(**source) for source in turn.sources],
                      unsupported=list(turn.unsupported), unmentioned=list(turn.unmentioned),
                      model_answer=turn.model_answer, status=turn.status, done=True)


def conversation_messages(conversation: Conversation) -> list[dict]:
    """The chatbot's messages for a saved conversation, as they were shown when it was live."""
    messages = []
    for turn in conversation.turns:
        messages.append({"role": "user", "content": html.escape(turn.question)})
        messages += answer_messages(stored_answer(turn))
    return messages


def export_file(conversation: Conversation, kind: str) -> str:
    """The conversation written to a fresh temporary file named after its title, for the download."""
    name = re.sub(r"[^\w-]+", "-", conversation.title).strip("-")[:60] or "conversation"
    folder = Path(tempfile.mkdtemp(prefix="chatapp-export-"))  # one per export: two users never share a file
    path = folder / f"{name}.{kind}"
    path.write_text(conversation.export(kind), encoding="utf-8")
    return str(path)


def build_chat_tab(settings: Settings, registry, store, page: gr.Blocks,
                   conversations: Conversations | None = None) -> dict:
    """Build the Chat tab's components inside the caller's `gr.Tab` of `page`; returns them by name.
    Conversations are saved in `conversations` (default: settings.conversations_db)."""
    conversations = conversations or Conversations(settings.conversations_db)
    info = gr.Markdown(lambda: model_line(registry), elem_id="model-info")
    # The model loads in the background after the page is up: the line follows it, then the timer stops.
    model_timer = gr.Timer(1.0, active=still_loading(registry))
    current = gr.State(None)  # the id of the conversation this page shows; None until its first turn is saved
    # What the page shows, changed in place (never returned, so every event of this page holds the same dict):
    # "view" counts each change of conversation (New chat, another one opened, the chatbot's bin, Delete),
    # "shown" is the conversation opened last, "deleted" those this page deleted. An answer whose page moved on
    # stops drawing: it finishes and is saved all the same, and only the list learns of it (it used to draw over
    # the chat the user had opened); an answer whose conversation this page deleted is not saved.
    page_view = gr.State(lambda: {"view": 0, "shown": None, "deleted": set()})
    # The same id kept in the browser (localStorage), so a reload or a restart of the app shows the
    # conversation the page showed, as ChatGPT and Open WebUI do, instead of an empty chat. BrowserState
    # draws a new key at every launch by default, and could then not read the value after a restart.
    # A new chat is remembered as NEW_CHAT, not None: BrowserState writes only a truthy value to localStorage,
    # so None left the last id there, and a reload after New chat brought that conversation back.
    remembered = gr.BrowserState(None, storage_key="chatapp-open-conversation",
                                 secret=kept_secret(settings.browser_secret_file))
    with gr.Row():
        with gr.Column(scale=1, min_width=280):
            new_chat = gr.Button("New chat", elem_id="new-chat")
            listed = gr.Radio(choices=[], value=None, label="Conversations (newest first)", elem_id="conversations")
            with gr.Accordion("This conversation", open=False, elem_id="conv-tools"):
                title = gr.Textbox(label="Title", elem_id="conv-title", max_lines=1)
                with gr.Row():
                    rename = gr.Button("Rename", elem_id="conv-rename", size="sm")
                    delete = gr.Button("Delete", elem_id="conv-delete", size="sm", variant="stop")
                with gr.Row():
                    export_md_button = gr.Button("Export Markdown", elem_id="conv-export-md", size="sm")
                    export_json_button = gr.Button("Export JSON", elem_id="conv-export-json", size="sm")
                exported = gr.File(label="Download", elem_id="conv-export", interactive=False)
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(elem_id="chatbot", label="Chat", height=480, sanitize_html=True, buttons=["copy"])
            with gr.Row():
                question = gr.Textbox(
                    elem_id="chat-input", placeholder="Ask about your documents…", show_label=False, scale=5, lines=1
                )
                send = gr.Button("Send", elem_id="chat-send", variant="primary", scale=1)
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

    def refresh_variants(current_variant):
        choices = registry.variants()  # rescans the adapters folder: new adapters need no restart
        return gr.Dropdown(choices=choices, value=current_variant if current_variant in choices else BASE)

    def conversation_choices(user: str) -> list[tuple[str, str]]:
        return [(s.title, s.id) for s in conversations.list(user)]

    def conversation_list(user: str, selected: str | None) -> gr.Radio:
        return gr.Radio(choices=conversation_choices(user), value=selected)

    def show(view: dict, conversation_id: str | None) -> None:
        """The page moves to another conversation (None: an empty chat)."""
        view["view"] += 1
        view["shown"] = conversation_id

    def save_turn(conversation_id: str | None, final: rag.Answer, variant_name: str, style_name: str,
                  user: str) -> str | None:
        """Store the finished turn; returns the conversation's id (a new one for a first turn, or when the
        conversation was deleted meanwhile, from another tab)."""
        turn = Turn.from_answer(final, variant_name, style_name)
        try:
            try:
                if conversation_id is None:
                    raise KeyError("no conversation yet")
                conversations.append_turn(conversation_id, turn, user)
            except KeyError:
                conversation_id = conversations.create(user)
                conversations.append_turn(conversation_id, turn, user)
        except sqlite3.Error as exc:  # a full disk, a broken file: the answer stays on the page
            log.exception("saving the turn failed")
            gr.Warning(f"This answer was not saved: {exc}")
        return conversation_id

    def finish_unseen(stream, latest: rag.Answer | None, conversation_id: str | None, variant_name: str,
                      style_name: str, user: str) -> None:
        """Finish an answer whose page went away and save the turn, so that the question and its answer are
        in the conversation when the user comes back. Reloading mid-answer lost both. In a thread of its own:
        Gradio closes the generator from its event loop, which must not wait for the model. `latest` is what
        the page last got: the page may go just as the finished answer reached it, before the save."""
        try:
            for latest in stream:
                pass
        except Exception:
            log.exception("finishing an answer whose page went away failed")
            return
        if latest is not None and latest.done:
            save_turn(conversation_id, latest, variant_name, style_name, user)

    def respond(message, history, conversation_id, variant_name, style_name, max_new, sample, temp, k_top, p_top,
                view: dict, request: gr.Request):
        history = list(history or [])
        message = (message or "").strip()
        keep = (gr.skip(),) * 4  # the conversation's id (kept twice), list and title change once the turn is saved
        if not message:
            yield history, gr.skip(), gr.skip(), gr.skip(), *keep
            return
        generation = GenerationSettings(int(max_new), bool(sample), float(temp), int(k_top), float(p_top))
        # The chatbot holds escaped text; the model and the retriever get it back as typed.
        prior = [{**turn, "content": html.unescape(turn["content"])} for turn in rag.text_history(history)]
        history.append({"role": "user", "content": html.escape(message)})
        user = user_of(request)
        mine = view["view"]
        stream = rag.answer(message, prior, store=store, registry=registry, variant=variant_name or BASE,
                            style=style_name or "cot", generation=generation, settings=settings)
        latest = None
        try:
            yield history, "", PENDING_SOURCES, gr.skip(), *keep
            for latest in stream:
                if latest.done or view["view"] != mine:  # done: shown below, once saved (sources mean on disk)
                    continue
                # The question box is left alone from here on: the next question, typed while this one streams,
                # stays there (each "" here used to wipe it).
                yield history + answer_messages(latest), gr.skip(), gr.skip(), gr.skip(), *keep
        except GeneratorExit:  # the page went away mid-answer (a reload, a closed tab): Gradio closes us
            threading.Thread(target=finish_unseen, args=(stream, latest, conversation_id, variant_name or BASE,
                                                         style_name or "cot", user), daemon=True).start()
            raise
        except (KeyError, ValueError) as exc:  # an adapter deleted meanwhile, a bad setting
            raise gr.Error(str(exc).strip("'\""), print_exception=False) from None
        except Exception as exc:  # the model failed to load, a model server went away: said in the chat, where
            # the question stays (gr.Error put every output in an error state, and the question was gone)
            log.exception("answering failed")
            if view["view"] != mine:  # the page shows another conversation now: nothing drawn over it
                yield (gr.skip(),) * len(outputs)
                return
            reason = " ".join(str(exc).split()) or type(exc).__name__
            failed = {"role": "assistant", "content": html.escape(f"⚠ Answering failed: {reason}", quote=False)}
            yield history + [failed], gr.skip(), EMPTY_SOURCES, model_line(registry), *keep
            return
        # Gradio draws an event's last update again as it completes: each way out below ends on one that draws
        # nothing over a page that moved on (a bare return redrew the first update, the question asked).
        if conversation_id in view["deleted"]:  # deleted here mid-answer: saving it would bring it back
            yield (gr.skip(),) * len(outputs)
            return
        # Saved before the page shows the answer as finished: what the page confirms is on disk.
        shown_before = conversation_id
        conversation_id = save_turn(conversation_id, latest, variant_name or BASE, style_name or "cot", user)
        # The title box is filled only for a conversation this turn created. Refilled after every answer, it
        # wiped a new title typed while the answer streamed, and a Rename then saved the old one.
        if view["view"] != mine and view["shown"] != conversation_id:  # the page shows another conversation now
            yield *(gr.skip(),) * 5, gr.Radio(choices=conversation_choices(user)), gr.skip(), gr.skip()
            return
        view["shown"] = conversation_id
        created = conversation_id and conversation_id != shown_before
        saved_title = conversations.get(conversation_id, user).title if created else gr.skip()
        yield (history + answer_messages(latest), gr.skip(), sources_html(latest, store), model_line(registry),
               conversation_id, conversation_list(user, conversation_id), saved_title, conversation_id)

    def shown(conversation: Conversation) -> tuple[list[dict], str]:
        """The chatbot's messages and the last answer's sources, for a saved conversation opened again."""
        last = stored_answer(conversation.turns[-1]) if conversation.turns else None
        return conversation_messages(conversation), sources_html(last, store)

    def open_conversation(conversation_id, view: dict, request: gr.Request):
        if not conversation_id:
            return (gr.skip(),) * 6
        try:
            conversation = conversations.get(conversation_id, user_of(request))
        except KeyError:  # deleted from another tab
            gr.Warning("That conversation no longer exists.")
            show(view, None)
            return [], EMPTY_SOURCES, None, conversation_list(user_of(request), None), "", NEW_CHAT
        show(view, conversation.id)
        return *shown(conversation), conversation.id, gr.skip(), conversation.title, conversation.id

    def reopen_on_load(remembered_id, view: dict, request: gr.Request):
        """The list, read again; and the conversation this browser showed last, when this user still has it.
        Run once, on the page's load (the BrowserState holds its stored value by then)."""
        user = user_of(request)
        try:
            conversation = conversations.get(remembered_id, user) if remembered_id not in (None, NEW_CHAT) else None
        except KeyError:  # deleted meanwhile, or another login's on a shared browser: start empty, quietly
            conversation = None
        if conversation is None:
            return gr.skip(), gr.skip(), None, conversation_list(user, None), gr.skip()
        view["shown"] = conversation.id  # what the page shows; no answer of this page is drawing yet
        return *shown(conversation), conversation.id, conversation_list(user, conversation.id), conversation.title

    def start_new(view: dict, request: gr.Request):
        show(view, None)
        return [], EMPTY_SOURCES, "", None, conversation_list(user_of(request), None), "", None, NEW_CHAT

    def rename_conversation(conversation_id, new_title, request: gr.Request):
        user = user_of(request)
        if not conversation_id:
            gr.Warning("Ask a question first: a conversation is saved with its first answer.")
            return gr.skip(), gr.skip()
        try:
            conversations.rename(conversation_id, new_title or "", user)
        except ValueError as exc:
            gr.Warning(str(exc))
            return gr.skip(), gr.skip()
        except KeyError:
            gr.Warning("That conversation no longer exists.")
            return conversation_list(user, None), gr.skip()
        return conversation_list(user, conversation_id), conversations.get(conversation_id, user).title

    def delete_conversation(conversation_id, view: dict, request: gr.Request):
        if conversation_id:
            view["deleted"].add(conversation_id)
            try:
                conversations.delete(conversation_id, user_of(request))
            except KeyError:
                pass  # already gone (another tab): the page ends up the same
        return start_new(view, request)

    def export(conversation_id, kind: str, request: gr.Request):
        if not conversation_id:
            gr.Warning("Ask a question first: a conversation is saved with its first answer.")
            return None
        try:
            return export_file(conversations.get(conversation_id, user_of(request)), kind)
        except KeyError:
            gr.Warning("That conversation no longer exists.")
            return None

    def export_markdown(conversation_id, request: gr.Request):
        return export(conversation_id, "md", request)

    def export_json(conversation_id, request: gr.Request):
        return export(conversation_id, "json", request)

    inputs = [question, chatbot, current, variant, style, max_new_tokens, do_sample, temperature, top_k, top_p,
              page_view]
    outputs = [chatbot, question, sources, info, current, listed, title, remembered]
    # One event for both: as two, Enter while a Send-started answer streamed queued a second answer, whose
    # history was the first one half streamed. As one event with "always_last", a question entered while an
    # answer streams is asked once that answer is done, and Gradio reads the inputs then: the whole history
    # and what the box holds by that time. ("once" dropped an Enter pressed just as an answer finished.)
    gr.on([send.click, question.submit], respond, inputs, outputs, trigger_mode="always_last",
          concurrency_limit=1, concurrency_id="generation")
    # Conversation events skip the queue: opening or listing one never waits behind a generation.
    fresh = [chatbot, sources, question, current, listed, title, exported, remembered]
    new_chat.click(start_new, page_view, fresh, queue=False)
    chatbot.clear(start_new, page_view, fresh, queue=False)  # the chatbot's own bin: the next question starts a new one
    listed.input(open_conversation, [listed, page_view], [chatbot, sources, current, listed, title, remembered], queue=False)
    rename.click(rename_conversation, [current, title], [listed, title], queue=False)
    title.submit(rename_conversation, [current, title], [listed, title], queue=False)
    delete.click(delete_conversation, [current, page_view], fresh, queue=False)
    export_md_button.click(export_markdown, current, exported, queue=False)
    export_json_button.click(export_json, current, exported, queue=False)
    # On every page load (a reload, a restart) the list is read again from the database, and the
    # conversation the page showed is opened again. On load only: run on each change of `remembered` as well
    # (`gr.on(None, …)`), it ran again after a list click, and again as the BrowserState took its stored value,
    # with a State dict that the load-time run had not marked. Late behind a busy app, such a run drew the
    # conversation over what the user did meanwhile: a New chat clicked just after a reload (each run logged
    # under CPU load), and most likely the title refilled after a follow-up in CI (stops 37 and 38).
    page.load(reopen_on_load, [remembered, page_view], [chatbot, sources, current, listed, title], queue=False)
    variant.focus(refresh_variants, variant, variant, queue=False)
    model_timer.tick(lambda: (model_line(registry), gr.Timer(active=still_loading(registry))),
                     None, [info, model_timer], queue=False, show_progress="hidden")

    return {
        "chatbot": chatbot, "question": question, "send": send, "new_chat": new_chat, "sources": sources,
        "variant": variant, "style": style, "info": info, "refresh_variants": refresh_variants,
        "conversations": listed, "current": current, "title": title, "exported": exported,
    }
