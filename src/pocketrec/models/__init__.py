"""Query encoders. A recommender = query encoder + item table."""

from pocketrec.models.session_encoder import EncoderConfig, SessionRecommender

__all__ = ["EncoderConfig", "SessionRecommender"]
