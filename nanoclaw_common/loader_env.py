"""Environment variables that change how a program loads code: refused in an ``add_mcp_server``
request (issue 8, "What the owner approves is what runs").

An owner who approves ``npx some-server`` approves that program. With ``NODE_OPTIONS=--require
/workspace/x.js`` beside it, every start of the server first runs a file the agent wrote, and
the card's ``npx`` says nothing about it. The same holds for the dynamic loader
(``LD_PRELOAD``), every interpreter's start-up hooks and search paths, git's config and hook
variables, and the variables that decide which program or which config file is found at all
(``PATH``, ``HOME``, ``XDG_CONFIG_HOME``: an ``.npmrc`` can set ``node-options`` too).

Refusing them is simpler and safer than naming them on the card: an owner cannot be expected
to know what ``GCONV_PATH`` does, and an MCP server that truly needs one of these can be added
by the operator (``container_configs``), outside the agent's reach. The host decides
(``nanoclaw_delivery.approvals``); the runner's tool refuses the same names as a courtesy.
Names are compared in upper case: ``npm_config_*`` is read in either case.
"""

from __future__ import annotations

from typing import Final

_EXACT: Final = frozenset(
    {
        # shells: start-up files, options, traps, exported functions
        "ENV",
        "BASH_ENV",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "PROMPT_COMMAND",
        "IFS",
        # which program and which config files are found
        "PATH",
        "HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
        # glibc and OpenSSL load modules named by these
        "GCONV_PATH",
        "GLIBC_TUNABLES",
        "OPENSSL_CONF",
        "OPENSSL_MODULES",
        "OPENSSL_ENGINES",
        # Java, Tcl, PHP, R
        "CLASSPATH",
        "TCLLIBPATH",
        "PHPRC",
        "PHP_INI_SCAN_DIR",
        "R_PROFILE",
        "R_PROFILE_USER",
        "R_ENVIRON",
        "R_ENVIRON_USER",
        "R_LIBS",
        "R_LIBS_USER",
    }
)

_PREFIXES: Final = (
    "LD_",  # LD_PRELOAD, LD_LIBRARY_PATH, LD_AUDIT…
    "DYLD_",
    "GIT_",  # GIT_CONFIG_*, GIT_EXEC_PATH, GIT_SSH_COMMAND, GIT_ASKPASS…
    "BASH_FUNC_",
    "PYTHON",  # PYTHONPATH, PYTHONSTARTUP, PYTHONHOME, PYTHONWARNINGS (imports a category)…
    "NODE_",  # NODE_OPTIONS, NODE_PATH, NODE_REPL_EXTERNAL_MODULE…
    "NPM_CONFIG_",  # npm_config_node_options, npm_config_userconfig, npm_config_script_shell…
    "PIP_",
    "UV_",
    "PERL",  # PERL5LIB, PERL5OPT, PERLLIB, PERL5DB
    "RUBY",  # RUBYOPT, RUBYLIB
    "GEM_",
    "BUNDLE_",
    "JAVA_",  # JAVA_TOOL_OPTIONS
    "_JAVA_",  # _JAVA_OPTIONS
    "JDK_",  # JDK_JAVA_OPTIONS
    "LUA_",  # LUA_PATH, LUA_CPATH, LUA_INIT
    "DENO_",
    "BUN_",
)

# Harmless members of the families above, common in MCP server configs: they change output
# or modes, never what is loaded.
_HARMLESS: Final = frozenset(
    {
        "PYTHONUNBUFFERED",
        "PYTHONIOENCODING",
        "PYTHONUTF8",
        "PYTHONDONTWRITEBYTECODE",
        "NODE_ENV",
        "NODE_NO_WARNINGS",
    }
)


def is_loader_variable(name: str) -> bool:
    """True when setting ``name`` can change what code a program loads or runs."""
    upper = name.upper()
    if upper in _HARMLESS:
        return False
    return upper in _EXACT or upper.startswith(_PREFIXES)
