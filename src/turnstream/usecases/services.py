"""The use cases one node offers, as the HTTP part (or any other adapter) sees them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from turnstream.metrics import Metrics
from turnstream.settings import ModelConfig
from turnstream.usecases.admission import TurnStarter
from turnstream.usecases.chats import Chats
from turnstream.usecases.control import TurnControl
from turnstream.usecases.conversations import Conversations
from turnstream.usecases.files import Files
from turnstream.usecases.following import Follower
from turnstream.usecases.health import Health
from turnstream.usecases.tooluse import ToolAnswers
from turnstream.usecases.usage import Usage


@dataclass(frozen=True)
class Services:
    conversations: Conversations
    chats: Chats
    turns: TurnStarter
    follower: Follower
    control: TurnControl
    answers: ToolAnswers
    files: Files
    usage: Usage
    health: Health
    models: Mapping[str, ModelConfig]
    metrics: Metrics
