"""The teacher's vLLM servers, started by hfdistill itself (`--serve`, `serve-teacher`): their flags (`flags`,
`model`), their GPUs (`gpus`), what to start (`plan`), one server under its supervisor (`supervisor`, `server`,
`logs`), and all of them started, watched, restarted and stopped together (`fleet`, `progress`). docs/vllm.md tells
the story."""
