"""Local fake servers that speak the real platforms' protocols, so the real client libraries
(python-telegram-bot, slack-sdk) run against them unchanged."""
