use std::path::PathBuf;

use clap::{Parser, Subcommand};

use alcove_inference::{api, bench, fetch, index, model, testmodel};

/// The Alcove inference server: an OpenAI-compatible API over a candle model, with retrieval
/// from knowledge-base indexes and encrypted conversation history.
#[derive(Parser)]
#[command(name = "alcove-inference", version)]
struct Cli {
    /// Log lines as JSON objects (for a cluster) or as text (for a terminal).
    #[arg(long, global = true, default_value = "text", value_parser = ["json", "text"])]
    log_format: String,
    /// Threads for the tensor math (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a model over the OpenAI-compatible HTTP API.
    Serve {
        /// A llama-family safetensors directory, a GGUF file, or a BERT-family embedding model directory.
        #[arg(long)]
        model: PathBuf,
        /// The id clients name in `model` (default: the directory or file name).
        #[arg(long)]
        model_id: Option<String>,
        /// Embedding model for retrieval (and `/v1/embeddings`) beside a chat model.
        #[arg(long)]
        embedding_model: Option<PathBuf>,
        #[arg(long)]
        embedding_model_id: Option<String>,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 8000)]
        port: u16,
        /// File holding the API key clients must present (re-read when it changes).
        #[arg(long)]
        api_key_file: PathBuf,
        /// A knowledge-base index directory written by `index`; repeatable.
        #[arg(long)]
        kb: Vec<PathBuf>,
        /// Chunks retrieved per question.
        #[arg(long, default_value_t = 4)]
        kb_top_k: usize,
        /// Directory for conversation history (encrypted at rest).
        #[arg(long)]
        history: Option<PathBuf>,
        /// 256-bit key for the history: 32 raw bytes, or hex or base64 text.
        #[arg(long)]
        history_key_file: Option<PathBuf>,
        /// System prompt put before every conversation (re-read when it changes).
        #[arg(long)]
        system_prompt_file: Option<PathBuf>,
        /// Requests that may wait for the model besides the one running; beyond, 429.
        #[arg(long, default_value_t = 16)]
        max_queue: usize,
        /// Largest request body accepted; beyond, 413.
        #[arg(long, default_value_t = 4 << 20)]
        max_body_bytes: usize,
        /// Most tokens one request may generate (the default when a request does not say).
        #[arg(long)]
        max_tokens: Option<usize>,
        /// Context window (prompt plus completion) in tokens, below the model's own.
        #[arg(long)]
        context_length: Option<usize>,
        /// Memory for saved KV states of earlier prompts, reused by requests that start the
        /// same way (system prompt, earlier turns); least recently used first out. 0 turns it off.
        #[arg(long, default_value_t = 256)]
        prefix_cache_mib: usize,
        /// Generations run together, sharing each step's pass over the weights (GGUF on the CPU;
        /// other models run one at a time). Requests beyond wait in the queue.
        #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
        parallel: u16,
    },
    /// Chunk and embed documents into a knowledge-base index (written atomically).
    Index {
        #[arg(long)]
        embedding_model: PathBuf,
        #[arg(long)]
        embedding_model_id: Option<String>,
        /// `[NAME=]DIR`: text or markdown documents under DIR (searched recursively), named by
        /// their path relative to DIR, prefixed with `NAME/` when given. Repeatable.
        #[arg(long, value_name = "[NAME=]DIR")]
        docs: Vec<String>,
        /// `NAME=URL`: fetch an HTTP(S) document as `NAME/<last path segment>`. Repeatable.
        #[arg(long = "url", value_name = "NAME=URL")]
        urls: Vec<String>,
        /// Index directory; an index already there is updated, reusing unchanged documents.
        #[arg(long)]
        out: PathBuf,
        /// Knowledge-base name reported in sources (default: the --out directory's name).
        #[arg(long)]
        name: Option<String>,
        #[arg(long, default_value_t = 800)]
        chunk_chars: usize,
        #[arg(long, default_value_t = 100)]
        overlap_chars: usize,
        /// Also write the JSON summary here (e.g. /dev/termination-log in a Job).
        #[arg(long)]
        summary_file: Option<PathBuf>,
    },
    /// Fill a model-cache volume from a URI (https://, http://, hf://org/repo[@revision]):
    /// verified, resumable, shared by every instance of the same source.
    Fetch(FetchArgs),
    /// Write a random-weight model with a real tokenizer and chat template.
    MakeTestModel {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, value_enum, default_value = "safetensors")]
        format: testmodel::Format,
        #[arg(long, value_enum, default_value = "tiny")]
        size: testmodel::Size,
        /// A BERT-family embedding model instead of a llama-family chat model.
        #[arg(long)]
        embedding: bool,
        /// Weight type inside a GGUF file.
        #[arg(long, value_enum, default_value = "q8_0")]
        quant: testmodel::Quant,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Measure time to first token and decode speed on a model file.
    Bench {
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 128)]
        prompt_tokens: usize,
        #[arg(long, default_value_t = 128)]
        gen_tokens: usize,
        #[arg(long, default_value_t = 3)]
        runs: usize,
        #[arg(long)]
        prompt_ids_out: Option<PathBuf>,
    },
}

/// `fetch`'s flags.
#[derive(clap::Args)]
struct FetchArgs {
    #[arg(long)]
    uri: String,
    /// The model-cache volume.
    #[arg(long)]
    cache: PathBuf,
    #[arg(long, value_enum)]
    format: fetch::Format,
    /// Inside the source: the .gguf file, or the model's directory.
    #[arg(long)]
    path: Option<String>,
    /// SHA-256 (hex) the weights file must have.
    #[arg(long)]
    sha256: Option<String>,
    /// Directory holding credential files: `header` (`Name: value`, for https), `token` (for
    /// the hub), or `accessKeyId` and `secretAccessKey` (and `sessionToken`, for S3).
    #[arg(long)]
    credentials: Option<PathBuf>,
    /// The model hub's base URL for hf:// sources.
    #[arg(long, default_value = "https://huggingface.co")]
    hub_endpoint: String,
    /// The S3-compatible store s3:// URIs name.
    #[arg(long, default_value = "https://s3.amazonaws.com")]
    s3_endpoint: String,
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
    /// Path-style S3 URLs (endpoint/bucket/key), as most stores besides AWS want.
    #[arg(long)]
    s3_path_style: bool,
    /// Allow sources on private, loopback and link-local addresses.
    #[arg(long)]
    allow_private_addresses: bool,
    /// Most bytes the model may take.
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Seconds between progress lines.
    #[arg(long, default_value_t = 2)]
    progress_seconds: u64,
    /// Environment variable holding PEM certificates to trust besides the system's.
    #[arg(long, default_value = "ALCOVE_FETCH_EXTRA_CA")]
    extra_ca_env: String,
    /// Where a failure is reported as JSON (the container's termination-message file).
    #[arg(long)]
    termination_log: Option<PathBuf>,
}

impl FetchArgs {
    fn options(self) -> fetch::Options {
        fetch::Options {
            uri: self.uri,
            cache: self.cache,
            format: self.format,
            path: self.path,
            sha256: self.sha256,
            credentials: self.credentials,
            hub_endpoint: self.hub_endpoint,
            s3: fetch::S3Store {
                endpoint: self.s3_endpoint,
                region: self.s3_region,
                path_style: self.s3_path_style,
            },
            allow_private_addresses: self.allow_private_addresses,
            max_bytes: self.max_bytes,
            progress_every: std::time::Duration::from_secs(self.progress_seconds.max(1)),
            extra_ca_pem: std::env::var(&self.extra_ca_env).ok(),
        }
    }
}

fn main() {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // SAFETY: set before any thread exists (the runtime and the tensor pools start later).
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RAYON_NUM_THREADS", n.to_string());
            std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
        }
    }
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if cli.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    if let Err(e) = run(cli.command) {
        tracing::error!("{e:#}");
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            model,
            model_id,
            embedding_model,
            embedding_model_id,
            host,
            port,
            api_key_file,
            kb,
            kb_top_k,
            history,
            history_key_file,
            system_prompt_file,
            max_queue,
            max_body_bytes,
            max_tokens,
            context_length,
            prefix_cache_mib,
            parallel,
        } => {
            let config = api::ServeConfig {
                model,
                model_id,
                embedding_model,
                embedding_model_id,
                host,
                port,
                api_key_file,
                kb,
                kb_top_k,
                history,
                history_key_file,
                system_prompt_file,
                max_queue,
                max_body_bytes,
                max_tokens,
                context_length,
                prefix_cache_bytes: prefix_cache_mib << 20,
                parallel: parallel.into(),
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(api::serve(config))
        }
        Command::Index {
            embedding_model,
            embedding_model_id,
            docs: dirs,
            urls,
            out,
            name,
            chunk_chars,
            overlap_chars,
            summary_file,
        } => {
            if dirs.is_empty() && urls.is_empty() {
                anyhow::bail!("nothing to index: give --docs DIR or --url NAME=URL");
            }
            let mut docs = Vec::new();
            for spec in &dirs {
                let (prefix, dir) = match spec.split_once('=') {
                    Some((name, dir)) if !name.is_empty() && !name.contains('/') => {
                        (Some(name), dir)
                    }
                    _ => (None, spec.as_str()),
                };
                for mut doc in index::read_documents(std::path::Path::new(dir))? {
                    if let Some(p) = prefix {
                        doc.id = format!("{p}/{}", doc.id);
                    }
                    docs.push(doc);
                }
            }
            if !urls.is_empty() {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                for spec in &urls {
                    let Some((source, url)) =
                        spec.split_once('=').filter(|(n, u)| !n.is_empty() && !u.is_empty())
                    else {
                        anyhow::bail!("--url {spec}: expected NAME=URL");
                    };
                    docs.push(rt.block_on(index::fetch(source, url))?);
                }
            }
            let model::ModelFiles::Bert(dir) = model::detect(&embedding_model)? else {
                anyhow::bail!(
                    "--embedding-model {}: not a BERT-family embedding model",
                    embedding_model.display()
                );
            };
            let id = embedding_model_id.unwrap_or_else(|| model::default_id(&embedding_model));
            let embedder = model::Embedder::load(&dir, id, &model::device())?;
            let opts = index::Options {
                docs,
                out,
                name,
                chunking: index::Chunking { chunk_chars, overlap_chars },
            };
            let summary = index::build(&embedder, &opts)?;
            let json = serde_json::to_string(&summary)?;
            println!("{json}");
            if let Some(path) = summary_file {
                std::fs::write(&path, &json)
                    .map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
            }
            Ok(())
        }
        Command::Fetch(args) => {
            let termination_log = args.termination_log.clone();
            std::process::exit(fetch::main(&args.options(), termination_log.as_deref()));
        }
        Command::MakeTestModel { out, format, size, embedding, quant, seed } => {
            let made =
                testmodel::make(&testmodel::Options { out, format, size, embedding, quant, seed })?;
            println!("{} parameters", made.parameters);
            for f in made.files {
                println!("{}", f.display());
            }
            Ok(())
        }
        Command::Bench { model, prompt_tokens, gen_tokens, runs, prompt_ids_out } => {
            let report = bench::run(&bench::Options {
                model,
                prompt_tokens,
                gen_tokens,
                runs: runs.max(1),
                prompt_ids_out,
            })?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(())
        }
    }
}
