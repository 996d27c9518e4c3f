"""The Gradio app: layout and event wiring. Handlers live in chat.py, compare.py, ab.py,
panel.py, controls.py, operator.py and overview.py, and call only the `Assistant` facade.

Every event has an `api_name`. The public ones are what `gradio_client.Client(url,
auth=(name, password))` drives: chat, rate, explain, regenerate_reply, branch, compare,
choose, new_conversation, open_conversation, assistant_panel; the user's controls
learning_paused, pause_learning, learn_from_conversation, undo_last_update, reset_to_base,
my_data, delete_my_account; and the operator's operator_data, rollback, train_now,
users_overview, feedback_browser and export_feedback.
The rest (the thumbs, retry and edit of the chat, the "why?" row, the choice buttons, table
clicks, refreshes) are private: they need the browser's event data or only repeat a public
endpoint.

Concurrency: replies (chat, compare) share one concurrency group limited by
`ServeConfig.concurrency`, set as `queue(default_concurrency_limit=...)`; see `ServeConfig`
for why. Quick reads and clicks run without a limit, so a rating never waits behind a reply.
The queue has no size limit: requests are queued, never dropped. A synchronous "train now"
(no background scheduler) runs one at a time.

One page sends one message at a time: chat and compare use trigger_mode="once", so a second
Enter while a reply is being written is ignored by the browser (the message box still holds
the text until the reply is stored, so nothing typed is lost). Requests from other tabs and
API clients are not affected: they wait in the queue. Opening another conversation or
starting a new one cancels the reply streaming on that page (nothing of it is stored; an
edit's branch stays, holding what came before the edited message), so the chat never shows
one conversation while a reply for another is written into it.
"""

from __future__ import annotations

import gradio as gr

from assistant import Assistant
from ui import ab
from ui.ab import WINNERS
from ui.chat import NEXT_IN_CHAT, Chat
from ui.compare import HELP, Compare
from ui.config import ServeConfig
from ui.controls import Controls
from ui.operator import Operator
from ui.overview import SORTS, THUMB_FILTERS, Overview
from ui.panel import Panel

GENERATION = "generation"  # the concurrency group of everything that runs the model
TRAINING = "training"
QUICK = {"concurrency_limit": None, "show_progress": "hidden"}
PRIVATE = {"api_visibility": "private"}


def build_app(asst: Assistant, config: ServeConfig) -> gr.Blocks:
    """The whole web app for one facade; launch it with `ui.serve.launch`."""
    chat, compare, panel, ops, controls, overview = (
        Chat(asst, config),
        Compare(asst, config),
        Panel(asst),
        Operator(asst, config),
        Controls(asst),
        Overview(asst),
    )
    with gr.Blocks(title="attune", analytics_enabled=False) as app:
        with gr.Row():
            gr.Markdown("# attune\nA chat assistant that learns from you.")
            gr.Button("Sign out", link="/logout", size="sm", scale=0)
        with gr.Row():
            with gr.Column(scale=4), gr.Tabs():
                with gr.Tab("Chat", id="chat"):
                    with gr.Row():
                        conversations = gr.Dropdown(
                            label="Your conversations",
                            choices=[],
                            allow_custom_value=True,
                            scale=4,
                        )
                        new_button = gr.Button("New conversation", scale=1)
                    conversation_id = gr.Textbox(visible=False, label="conversation id")
                    chatbot = gr.Chatbot(
                        label="Conversation",
                        group_consecutive_messages=False,
                        buttons=["copy", "copy_all"],
                        placeholder="Ask anything. Thumbs up or down on a reply teach your "
                        "assistant; clicking the same thumb again takes it back.",
                        elem_id="chatbot",
                        editable="user",  # edit a message: the conversation goes on in a branch
                    )
                    with gr.Row(visible=False, elem_id="regenerated") as regenerated_row:
                        regenerated_note = gr.Markdown()
                        regenerated_buttons = {
                            w: gr.Button(label, size="sm") for w, label in WINNERS.items()
                        }
                    regenerated_pair = gr.Textbox(visible=False, label="regenerated pair id")
                    with gr.Row():
                        message = gr.Textbox(
                            label="Message",
                            placeholder="Type a message and press Enter",
                            scale=5,
                            elem_id="message",
                        )
                        send_button = gr.Button("Send", variant="primary", scale=1)
                    rated = gr.Textbox(visible=False, label="rated reply id")
                    with gr.Row(visible=False, elem_id="why-row") as why_row:
                        why_preset = gr.Radio(
                            choices=list(config.reasons),
                            label="Thumb saved. Why? (optional)",
                            elem_id="why-preset",
                            scale=3,
                        )
                        why_own = gr.Textbox(
                            label="Or in your own words",
                            placeholder="Press Enter to add it to your thumb",
                            elem_id="why-own",
                            scale=2,
                        )
                    learn_box = gr.Checkbox(
                        label="Learn from this conversation (untick: it is kept, never taught)",
                        value=True,
                        elem_id="learn-here",
                    )
                    last_reply = gr.JSON(visible=False, label="last reply")
                with gr.Tab("Compare", id="compare"):
                    gr.Markdown(HELP)
                    with gr.Row():
                        prompt = gr.Textbox(label="Question", scale=5, elem_id="prompt")
                        compare_button = gr.Button("Compare", variant="primary", scale=1)
                    with gr.Row():
                        answer_a = gr.Markdown(label="Answer A", container=True, elem_id="answer-a")
                        answer_b = gr.Markdown(label="Answer B", container=True, elem_id="answer-b")
                    with gr.Row():
                        choice_buttons = {
                            w: gr.Button(label, interactive=False) for w, label in WINNERS.items()
                        }
                    pair_id = gr.Textbox(visible=False, label="pair id")
                    choice_note = gr.Markdown()
                with gr.Tab("Operator", id="operator", visible=False) as operator_tab:
                    alerts_text = gr.Markdown(elem_id="alerts")
                    with gr.Row():
                        sort = gr.Dropdown(label="Sort by", choices=list(SORTS), value="user")
                        descending = gr.Checkbox(label="Descending", value=False)
                        name_filter = gr.Textbox(label="User name contains")
                        users_page = gr.Number(label="Page", value=1, precision=0, minimum=1)
                    users_table = gr.Dataframe(
                        label="All users (click a row to see that user below)",
                        interactive=False,
                        elem_id="all-users",
                    )
                    users_note = gr.Markdown()
                    users_on_page = gr.State([])
                    with gr.Row():
                        picked = gr.Dropdown(
                            label="User", choices=[], allow_custom_value=True, scale=3
                        )
                        refresh_button = gr.Button("Refresh", scale=1)
                    operator_summary = gr.Markdown()
                    reward_plot = gr.LinePlot(
                        x="started",
                        y="reward",
                        color="series",
                        title="Reward per training run (held-out prompts)",
                        x_title="run started",
                        elem_id="reward-plot",
                    )
                    with gr.Row():
                        kl_plot = gr.LinePlot(
                            x="started", y="kl", title="KL to the base (nats per reply)"
                        )
                        accuracy_plot = gr.LinePlot(
                            x="started",
                            y="heldout_accuracy",
                            title="Reward-head held-out accuracy",
                        )
                    volume_plot = gr.BarPlot(
                        x="user", y="clicks", color="kind", title="Feedback per user"
                    )
                    versions_table = gr.Dataframe(label="Adapter versions", interactive=False)
                    with gr.Row():
                        version = gr.Number(label="Version to bring back", precision=0, value=0)
                        rollback_button = gr.Button("Roll back", variant="stop")
                        train_button = gr.Button("Train now")
                    operator_note = gr.Markdown()
                    safety_table = gr.Dataframe(
                        label="Safety: offensive replies per user", interactive=False
                    )
                    flagged_table = gr.Dataframe(
                        label="Flagged replies (by the classifier or by their user), newest first",
                        interactive=False,
                        wrap=True,
                    )
                    with gr.Accordion("Feedback browser", open=False):
                        with gr.Row():
                            fb_user = gr.Textbox(label="User (exact name; empty: everyone)")
                            fb_thumb = gr.Radio(list(THUMB_FILTERS), value="both", label="Thumbs")
                            fb_reason = gr.Textbox(label="Reason contains")
                            fb_version = gr.Textbox(label="Version (empty: any)")
                            fb_page = gr.Number(label="Page", value=1, precision=0, minimum=1)
                        fb_table = gr.Dataframe(
                            label="Thumbs, newest first (click one to read its conversation)",
                            interactive=False,
                            wrap=True,
                            elem_id="feedback-browser",
                        )
                        fb_note = gr.Markdown()
                        fb_links = gr.State([])
                        fb_conversation = gr.Markdown(elem_id="feedback-conversation")
                        with gr.Row():
                            export_button = gr.Button("Export feedback (TRL JSONL, zipped)")
                            export_file = gr.File(
                                label="Export",
                                visible=False,
                                interactive=False,
                                elem_id="feedback-export",
                            )
                    operator_timer = gr.Timer(config.refresh_seconds, active=False)
            with gr.Column(scale=1, min_width=220):
                panel_text = gr.Markdown(elem_id="assistant-panel")
                panel_timer = gr.Timer(config.refresh_seconds)
                with gr.Accordion("Your controls", open=True):
                    pause_box = gr.Checkbox(label="Pause learning", elem_id="pause-learning")
                    undo_button = gr.Button("Undo last update", size="sm")
                    undo_confirm = gr.Button(
                        "Yes, undo it", variant="stop", size="sm", visible=False
                    )
                    reset_button = gr.Button("Reset to the base model", size="sm")
                    reset_confirm = gr.Button(
                        "Yes, reset", variant="stop", size="sm", visible=False
                    )
                    download_button = gr.Button("Download my data", size="sm")
                    my_data_file = gr.File(
                        label="Your data", visible=False, interactive=False, elem_id="my-data"
                    )
                    delete_password = gr.Textbox(
                        label="Your password, to delete your account", type="password"
                    )
                    delete_button = gr.Button("Delete my account", variant="stop", size="sm")
                    controls_note = gr.Markdown(elem_id="controls-note")

        refresh_panel = {"fn": panel.render, "outputs": panel_text, **QUICK, **PRIVATE}
        dashboard = {
            "fn": ops.dashboard,
            "inputs": picked,
            "outputs": [
                picked,
                reward_plot,
                kl_plot,
                accuracy_plot,
                volume_plot,
                versions_table,
                operator_summary,
                safety_table,
                flagged_table,
            ],
            **QUICK,
        }

        users = {
            "fn": overview.table,
            "inputs": [sort, descending, users_page, name_filter],
            "outputs": [users_table, users_note, alerts_text, users_on_page],
            **QUICK,
        }

        # page load: history from storage, the panel, the operator tab for operators only
        restored = app.load(
            chat.restore,
            outputs=[chatbot, conversation_id, conversations],
            api_name="restore",
            **QUICK,
            **PRIVATE,
        )
        app.load(**(refresh_panel | {"api_visibility": "public"}), api_name="assistant_panel")
        operator_started = app.load(
            ops.start,
            outputs=[operator_tab, operator_timer],
            api_name="operator_start",
            **QUICK,
            **PRIVATE,
        )
        operator_started.then(
            **(dashboard | {"fn": ops.first_view}), api_name="operator_first_view", **PRIVATE
        )
        operator_started.then(
            **(users | {"fn": overview.first_table}), api_name="users_first_view", **PRIVATE
        )
        panel_timer.tick(**refresh_panel, api_name="panel_on_timer")

        # chat
        replying = gr.on(
            [message.submit, send_button.click],
            chat.send,
            inputs=[message, conversation_id],
            outputs=[chatbot, conversation_id, message, conversations, last_reply],
            api_name="chat",
            concurrency_id=GENERATION,
            trigger_mode="once",
        )
        replying.then(**refresh_panel, api_name="panel_after_chat")
        editing = chatbot.edit(
            chat.edit,
            inputs=conversation_id,
            outputs=[chatbot, conversation_id, message, conversations, last_reply],
            api_name="edit",
            concurrency_id=GENERATION,
            **PRIVATE,
        )
        editing.then(**refresh_panel, api_name="panel_after_edit")
        starting = gr.on(
            [new_button.click, chatbot.clear],  # clearing the chat starts a new conversation
            chat.new,
            outputs=[chatbot, conversation_id, conversations],
            api_name="new_conversation",
            cancels=[replying, editing],
            **QUICK,
        )
        opening = conversations.input(
            chat.open,
            inputs=conversations,
            outputs=[chatbot, conversation_id],
            api_name="open_conversation",
            cancels=[replying, editing],
            **QUICK,
        )
        chatbot.retry(
            chat.retry,
            inputs=conversation_id,
            outputs=[chatbot, regenerated_pair, *regenerated_buttons.values(), regenerated_note],
            api_name="regenerate",
            concurrency_id=GENERATION,
            **PRIVATE,
        ).success(
            lambda: gr.Row(visible=True),
            outputs=regenerated_row,
            api_name="show_regenerated",
            **QUICK,
            **PRIVATE,
        )
        for winner, button in regenerated_buttons.items():
            button.click(
                ab.choice_button(asst, winner, NEXT_IN_CHAT),
                inputs=regenerated_pair,
                outputs=[*regenerated_buttons.values(), regenerated_note],
                api_name=f"regenerated_{winner}",
                **QUICK,
                **PRIVATE,
            ).then(**refresh_panel, api_name=f"panel_after_regenerated_{winner}")
        leaving = {"chat": replying, "edit": editing, "new": starting, "open": opening}
        for name, event in leaving.items():  # another turn or conversation: that pair is past
            event.then(
                lambda: gr.Row(visible=False),
                outputs=regenerated_row,
                api_name=f"hide_regenerated_after_{name}",
                **QUICK,
                **PRIVATE,
            )
        chatbot.like(
            chat.like,
            inputs=conversation_id,
            outputs=[rated, why_row, why_preset, why_own],  # the "why?" row, emptied
            api_name="like",
            **QUICK,
            **PRIVATE,
        ).then(**refresh_panel, api_name="panel_after_like")
        why_preset.input(
            chat.explain_preset, [rated, why_preset], api_name="why_preset", **QUICK, **PRIVATE
        )
        why_own.submit(
            chat.explain, [rated, why_own], why_own, api_name="why_own_words", **QUICK, **PRIVATE
        )
        gr.api(chat.explain, api_name="explain", concurrency_limit=None)
        gr.api(chat.regenerate_api, api_name="regenerate_reply", concurrency_id=GENERATION)
        gr.api(chat.branch_api, api_name="branch", concurrency_limit=None)
        gr.api(chat.rate, api_name="rate", concurrency_limit=None)

        # compare
        gr.on(
            [prompt.submit, compare_button.click],
            compare.ask,
            inputs=prompt,
            outputs=[answer_a, answer_b, pair_id, *choice_buttons.values(), choice_note, prompt],
            api_name="compare",
            concurrency_id=GENERATION,
            trigger_mode="once",
        )
        for winner, button in choice_buttons.items():
            button.click(
                compare.button(winner),
                inputs=pair_id,
                outputs=[*choice_buttons.values(), choice_note],
                api_name=f"choose_{winner}",
                **QUICK,
                **PRIVATE,
            ).then(**refresh_panel, api_name=f"panel_after_choose_{winner}")
        gr.api(compare.choose, api_name="choose", concurrency_limit=None)

        # the user's controls
        opened = {"fn": controls.learns, "inputs": conversation_id, "outputs": learn_box}
        app.load(controls.paused, outputs=pause_box, api_name="learning_paused", **QUICK)
        pause_box.input(
            controls.pause,
            inputs=pause_box,
            outputs=controls_note,
            api_name="pause_learning",
            **QUICK,
        ).then(**refresh_panel, api_name="panel_after_pause")
        learn_box.input(
            controls.learn_here,
            inputs=[conversation_id, learn_box],
            outputs=controls_note,
            api_name="learn_from_conversation",
            **QUICK,
        )
        replying.then(
            controls.apply_learn_here,
            inputs=[conversation_id, learn_box],
            api_name="learn_after_chat",
            **QUICK,
            **PRIVATE,
        )
        restored.then(**opened, api_name="learns_after_restore", **QUICK, **PRIVATE)
        opening.then(**opened, api_name="learns_after_open", **QUICK, **PRIVATE)
        starting.then(**opened, api_name="learns_after_new", **QUICK, **PRIVATE)
        # the first click only asks (and shows the confirming button); the second acts
        for ask_button, confirm, ask, act, api_name in (
            (undo_button, undo_confirm, controls.ask_undo, controls.undo, "undo_last_update"),
            (reset_button, reset_confirm, controls.ask_reset, controls.reset, "reset_to_base"),
        ):
            shown = [confirm, controls_note]
            ask_button.click(ask, outputs=shown, api_name=f"ask_{api_name}", **QUICK, **PRIVATE)
            confirm.click(act, outputs=shown, api_name=api_name, **QUICK).then(
                **refresh_panel, api_name=f"panel_after_{api_name}"
            )
        download_button.click(controls.download, outputs=my_data_file, api_name="my_data", **QUICK)
        delete_button.click(
            controls.delete_account,
            inputs=delete_password,
            outputs=controls_note,
            api_name="delete_my_account",
            **QUICK,
        ).success(None, js="() => { window.location.href = '/logout'; }")

        # operator: all users, alerts, the feedback browser
        gr.on(
            [sort.input, descending.input, users_page.submit, name_filter.submit],
            **users,
            api_name="users_overview",
        )
        operator_timer.tick(**users, api_name="users_on_timer", **PRIVATE)
        users_table.select(
            overview.pick,
            inputs=users_on_page,
            outputs=picked,
            api_name="operator_pick_row",
            **QUICK,
            **PRIVATE,
        ).then(**dashboard, api_name="operator_after_pick", **PRIVATE)
        gr.on(
            [fb_thumb.input, fb_user.submit, fb_reason.submit, fb_version.submit, fb_page.submit],
            overview.feedback,
            inputs=[fb_user, fb_thumb, fb_reason, fb_version, fb_page],
            outputs=[fb_table, fb_note, fb_links],
            api_name="feedback_browser",
            **QUICK,
        )
        fb_table.select(
            overview.conversation,
            inputs=fb_links,
            outputs=fb_conversation,
            api_name="feedback_conversation",
            **QUICK,
            **PRIVATE,
        )
        export_button.click(
            overview.export, inputs=fb_user, outputs=export_file, api_name="export_feedback"
        )
        gr.on([refresh_button.click, picked.input], **dashboard, api_name="operator_data")
        operator_timer.tick(**dashboard, api_name="operator_on_timer", **PRIVATE)
        rollback_button.click(
            ops.rollback,
            inputs=[picked, version],
            outputs=operator_note,
            api_name="rollback",
            **QUICK,
        ).then(**dashboard, api_name="operator_after_rollback", **PRIVATE)
        train_button.click(
            ops.train_now,
            inputs=picked,
            outputs=operator_note,
            api_name="train_now",
            concurrency_id=TRAINING,
            concurrency_limit=1,
        ).then(**dashboard, api_name="operator_after_train", **PRIVATE)
    app.queue(default_concurrency_limit=config.concurrency)
    return app
