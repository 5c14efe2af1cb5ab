"""The OpenAI-compatible /v1 API on the app's own port: the real app.py, the real embedded model and store,
driven by the official `openai` SDK and LangChain's `ChatOpenAI` over HTTP."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from langchain_openai import ChatOpenAI

from chatapp.api import streamable
from chatapp.rag import Answer
from chatapp.settings import Settings
from conftest import data_with_the_paper, make_tiny_adapter, running_app

KEY = "test-key-16"
PDF = "attention-is-all-you-need.pdf"
QUESTION = "How many warmup steps were used?"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory, corpus):
    return data_with_the_paper(tmp_path_factory.mktemp("api-data"))


@pytest.fixture(scope="module")
def url(data):
    with running_app(data, env={"CHATAPP_API_KEY": KEY}) as page:
        yield page.rstrip("/") + "/v1"


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url, api_key=KEY, timeout=120, max_retries=0)


def test_models_lists_base_and_an_adapter_added_while_running(client, data):
    assert [m.id for m in client.models.list()] == ["base"]
    make_tiny_adapter(Settings.from_env(data_dir=data), seed=0, scale=0.0, name="tiny")
    assert [m.id for m in client.models.list()] == ["base", "tiny"]  # no restart


def test_cited_answer_carries_the_sources_at_the_top_level(client):
    completion = client.chat.completions.create(model="base", messages=[{"role": "user", "content": QUESTION}],
                                                max_tokens=32)
    assert completion.object == "chat.completion" and completion.model == "base"
    assert completion.choices[0].message.role == "assistant"
    assert completion.choices[0].message.content.strip()
    extra = completion.model_extra
    assert extra["status"] == "answered"
    assert extra["answer"] == completion.choices[0].message.content
    assert (PDF, 7) in {(s["source"], s["page"]) for s in extra["sources"]}  # "warmup_steps = 4000" is on p. 7
    assert {"source", "page", "text", "score"} <= set(extra["sources"][0])


def test_stream_sends_deltas_and_its_last_chunk_carries_the_sources(client):
    chunks = list(client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": QUESTION}], max_tokens=32, stream=True))
    assert len(chunks) >= 4 and all(c.object == "chat.completion.chunk" for c in chunks)  # role, deltas, last
    last = chunks[-1]
    assert last.choices[0].finish_reason == "stop"
    assert all("sources" not in (c.model_extra or {}) for c in chunks[:-1])
    assert (PDF, 7) in {(s["source"], s["page"]) for s in last.model_extra["sources"]}
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content", "") for c in chunks)
    final = last.model_extra["answer"]
    # the deltas are the final answer, or, where the evidence check replaced it, the model's then the replacement
    assert streamed.strip() and (final.startswith(streamed.strip()[:10]) or streamed.endswith("\n\n" + final))
    assert reasoning.startswith("Passage [")  # chain-of-thought: the reasoning streams apart from the answer


def test_a_wrong_or_missing_key_gets_401_in_openai_error_shape(url):
    bad = openai.OpenAI(base_url=url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as caught:
        bad.models.list()
    assert caught.value.status_code == 401 and caught.value.code == "invalid_api_key"
    request = urllib.request.Request(url + "/chat/completions", data=b"{}", method="POST")
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=10)
    assert caught.value.code == 401 and set(json.load(caught.value)["error"]) == {"message", "type", "param", "code"}


def test_bad_requests_get_4xx_in_openai_error_shape(client):
    user = [{"role": "user", "content": QUESTION}]
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=user)
    assert caught.value.code == "model_not_found"
    for kwargs in ({"messages": []}, {"messages": user, "temperature": 5}, {"messages": user, "max_tokens": 0},
                   {"messages": [{"role": "assistant", "content": "hi"}]}, {"messages": user, "n": 2},
                   {"messages": user, "extra_body": {"style": "poetry"}}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="base", **kwargs)
        assert caught.value.status_code == 400 and caught.value.body["message"], kwargs


def test_retrieval_off_is_a_plain_chat_with_the_variant(client):
    completion = client.chat.completions.create(
        model="tiny", messages=[{"role": "system", "content": "Reply briefly."}, {"role": "user", "content": "What is 2 + 2?"}],
        max_tokens=8, extra_body={"retrieval": False})
    assert completion.choices[0].message.content.strip()
    assert completion.model == "tiny" and completion.model_extra["sources"] == []


def test_eight_concurrent_requests_all_complete(client):
    questions = [QUESTION, "What optimizer was used?", "How many layers does the encoder have?",
                 "What is multi-head attention?"] * 2

    def ask(question):
        return client.chat.completions.create(model="base", messages=[{"role": "user", "content": question}],
                                              max_tokens=6, extra_body={"style": "direct"})

    start = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(ask, questions))
    print(f"8 concurrent requests in {time.perf_counter() - start:.1f} s")
    assert len(results) == 8 and len({r.id for r in results}) == 8
    assert all(r.choices[0].finish_reason == "stop" and r.model_extra["sources"] for r in results)


def test_langchain_chat_openai_answers_and_streams(url):
    chat = ChatOpenAI(base_url=url, api_key=KEY, model="base", max_tokens=24, max_retries=0, timeout=120)
    message = chat.invoke(QUESTION)
    assert message.content.strip() and message.response_metadata["model_name"] == "base"
    pieces = [chunk.content for chunk in chat.stream([("user", QUESTION)])]
    assert len(pieces) > 3 and "".join(pieces).strip()
    with pytest.raises(openai.AuthenticationError):
        ChatOpenAI(base_url=url, api_key="wrong", model="base", max_retries=0).invoke("hi")


def test_a_page_login_without_an_api_key_refuses_every_api_request(tmp_path):
    """The real app with CHATAPP_AUTH and no key: the login still guards the page, and /v1 is off."""
    with running_app(tmp_path, env={"CHATAPP_AUTH": "ada:lovelace"}) as page:
        for request in (urllib.request.Request(page + "v1/models"),
                        urllib.request.Request(page + "v1/chat/completions", data=b'{"model": "base"}', method="POST")):
            with pytest.raises(urllib.error.HTTPError) as caught:
                urllib.request.urlopen(request, timeout=10)
            assert caught.value.code == 403 and json.load(caught.value)["error"]["code"] == "api_disabled"
        with pytest.raises(urllib.error.HTTPError) as caught:  # the page's config needs the login
            urllib.request.urlopen(page + "config", timeout=10)
        assert caught.value.code == 401
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())
        with opener.open(page + "login", data=b"username=ada&password=lovelace", timeout=10) as response:
            assert response.url == page  # signed in, sent on to the page
        with opener.open(page + "config", timeout=10) as response:
            assert response.status == 200


def test_streamable_holds_back_text_that_may_still_change():
    def partial(raw: str, style: str = "cot", **fields) -> tuple[str, str]:
        return streamable(Answer("q", raw=raw, **fields), style)

    assert partial("Passage [1] says 4000.\nFinal ans") == ("Passage [1] says 4000.", "")  # the marker being written
    assert partial("Answer: 4000 [1", "direct") == ("", "4000")  # a label, then a citation rag removes once complete
    assert partial("Passage [1] says 4000.\nFinal answer: Passage [1] sa", "cot") == ("Passage [1] says 4000.", "")
    assert partial("Passage [1] says 4000.\nFinal answer: 4000 steps [1] were") == ("Passage [1] says 4000.", "4000 steps")
    assert partial("Still storing", status="waiting") == ("", "")
    done = Answer("q", raw="x", reasoning="r", answer="a", done=True)
    assert streamable(done, "cot") == ("r", "a")


def test_store_saves_the_exchange_and_conversation_id_continues_it_from_the_stored_turns(client, data):
    """The API writes through the Chat tab's conversations: a follow-up sent alone, with the id, is condensed
    against the stored first turn (the encoder question), and each user reaches only their own."""
    from chatapp.conversations import Conversations

    first = client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "How many layers does the encoder have?"}],
        store=True, user="ada")
    conversation_id = first.model_extra["conversation_id"]
    follow_up = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "And the decoder?"}],
                                               user="ada", extra_body={"conversation_id": conversation_id})
    assert follow_up.model_extra["conversation_id"] == conversation_id
    assert follow_up.model_extra["standalone_question"] != "And the decoder?"  # the stored history reached rag
    assert 3 in {s["page"] for s in follow_up.model_extra["sources"]}  # 3.1: the decoder's stack of N = 6 layers

    saved = Conversations(Settings.from_env(data_dir=data).conversations_db).get(conversation_id, "ada")
    assert [t.question for t in saved.turns] == ["How many layers does the encoder have?", "And the decoder?"]
    assert saved.turns[1].answer == follow_up.choices[0].message.content and saved.turns[1].variant == "base"
    for user in ("eve", None):  # another user, or none, cannot continue (or learn of) ada's conversation
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="base", messages=[{"role": "user", "content": "And then?"}],
                                           user=user or openai.NOT_GIVEN, extra_body={"conversation_id": conversation_id})
        assert caught.value.body["code"] == "conversation_not_found"
    assert len(Conversations(Settings.from_env(data_dir=data).conversations_db).get(conversation_id, "ada").turns) == 2
