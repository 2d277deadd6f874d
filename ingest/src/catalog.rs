//! Real-looking model names, their providers, and the apps that call them.

/// (model, provider) pairs, most used first. The simulator gives them a
/// Zipf-like share of traffic in this order.
pub const MODELS: &[(&str, &str)] = &[
    ("qwen/qwen3.6-plus", "alibaba"),
    ("anthropic/claude-sonnet-4.5", "anthropic"),
    ("openai/gpt-5", "openai"),
    ("google/gemini-2.5-pro", "google-vertex"),
    ("deepseek/deepseek-v3.2", "deepseek"),
    ("x-ai/grok-4-fast", "xai"),
    ("google/gemini-2.5-flash", "google-ai-studio"),
    ("anthropic/claude-opus-4.1", "anthropic"),
    ("openai/gpt-5-mini", "openai"),
    ("meta-llama/llama-4-maverick", "together"),
    ("moonshotai/kimi-k2", "moonshotai"),
    ("z-ai/glm-4.6", "z-ai"),
    ("mistralai/mistral-medium-3.1", "mistral"),
    ("qwen/qwen3-coder", "alibaba"),
    ("openai/gpt-oss-120b", "groq"),
    ("anthropic/claude-haiku-4.5", "anthropic"),
    ("deepseek/deepseek-r1", "fireworks"),
    ("minimax/minimax-m2", "minimax"),
    ("google/gemma-3-27b-it", "deepinfra"),
    ("meta-llama/llama-3.3-70b-instruct", "cerebras"),
    ("openai/gpt-4.1-mini", "azure"),
    ("mistralai/codestral-2508", "mistral"),
    ("qwen/qwen3-235b-a22b", "novita"),
    ("x-ai/grok-code-fast-1", "xai"),
    ("nvidia/llama-3.3-nemotron-super-49b", "nvidia"),
    ("cohere/command-a", "cohere"),
    ("microsoft/phi-4", "azure"),
    ("amazon/nova-pro-v1", "amazon-bedrock"),
    ("baidu/ernie-4.5-300b", "baidu"),
    ("通义/qwen-max-中文", "alibaba"),
];

/// The models that think before they answer: the simulator counts 30% of
/// their completion tokens as reasoning tokens.
pub const REASONING_MODELS: &[&str] = &[
    "openai/gpt-5",
    "google/gemini-2.5-pro",
    "x-ai/grok-4-fast",
    "anthropic/claude-opus-4.1",
    "openai/gpt-5-mini",
    "deepseek/deepseek-r1",
    "qwen/qwen3-235b-a22b",
];

/// Calling applications (or API key ids), most active first.
pub const APPS: &[&str] = &[
    "cline",
    "kilo-code",
    "roo-code",
    "openrouter-chat",
    "sillytavern",
    "janitor-ai",
    "cursor-proxy",
    "aider",
    "continue",
    "zed",
    "librechat",
    "open-webui",
    "n8n",
    "langchain-batch",
    "internal-evals",
    "",
];

/// Regions the fleet runs in.
pub const REGIONS: &[&str] = &["us-east", "us-west", "eu-central", "ap-southeast"];
