// Weft's trainer: llama.cpp's optimizer (llama_opt_init / llama_opt_epoch) behind a small N-API surface.
// Every call that computes (a training or evaluation step, a save) runs as async work off the JS thread, one batch
// at a time, so the caller sees each step's loss as it happens and can stop between steps.
#include <node_api.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "ggml-backend.h"
#include "ggml-opt.h"
#include "llama.h"

namespace {

struct Trainer {
  llama_model * model = nullptr;
  llama_context * ctx = nullptr;
  int64_t n_ctx = 0;
  int64_t n_vocab = 0;
  float learning_rate = 1e-3f;
  float weight_decay = 0.0f;
  bool busy = false;
  // The step in flight, read by `observe_loss` on the worker thread: its windows, which labels count (null: all), the
  // window the next loss node belongs to, and the loss and accuracy summed over the labels that count.
  const int32_t * windows = nullptr;
  const uint8_t * targets = nullptr;
  int64_t window = 0;
  double loss_sum = 0;
  int64_t counted = 0;
  int64_t correct = 0;
  bool logits_ready = false;
  bool unmaskable = false;
};

// The scheduler asks this about every node before computing it (ask = true) and calls it again once a node it asked
// for is computed (ask = false). Asking for the logits ends a computation range there, so that when the cross-entropy
// node is asked about next, its inputs (logits, one-hot labels) hold this window's values and its labels can still be
// changed. A label that does not count becomes the row's own softmax: the loss's gradient there, softmax - label
// (ggml_compute_forward_cross_entropy_loss_back), is then zero, so only the labels that count train the model. The
// loss and accuracy reported are computed here over those labels; ggml's own figures would count every position.
bool observe_loss(ggml_tensor * t, bool ask, void * userdata) {
  auto * trainer = static_cast<Trainer *>(userdata);
  if (!ask) {
    trainer->logits_ready = trainer->logits_ready || std::strcmp(t->name, "result_output") == 0;
    return true;
  }
  if (std::strcmp(t->name, "result_output") == 0) return true;
  if (t->op != GGML_OP_CROSS_ENTROPY_LOSS || trainer->windows == nullptr) return false;
  ggml_tensor * logits = t->src[0];
  ggml_tensor * labels = t->src[1];
  const int64_t n_vocab = logits->ne[0];
  const int64_t rows = logits->ne[1];
  if (!trainer->logits_ready || rows != trainer->n_ctx || !ggml_backend_buffer_is_host(logits->buffer) ||
      !ggml_backend_buffer_is_host(labels->buffer)) {
    trainer->unmaskable = true;
    return false;
  }
  trainer->logits_ready = false;
  const int64_t window = trainer->window++;
  const int32_t * tokens = trainer->windows + window * (trainer->n_ctx + 1);
  const uint8_t * targets = trainer->targets == nullptr ? nullptr : trainer->targets + window * trainer->n_ctx;
  for (int64_t row = 0; row < rows; ++row) {
    const float * x = reinterpret_cast<const float *>(static_cast<const char *>(logits->data) + row * logits->nb[1]);
    float * y = reinterpret_cast<float *>(static_cast<char *>(labels->data) + row * labels->nb[1]);
    int64_t best = 0;
    for (int64_t i = 1; i < n_vocab; ++i) if (x[i] > x[best]) best = i;
    const float max = x[best];
    double sum = 0;
    for (int64_t i = 0; i < n_vocab; ++i) sum += std::exp(static_cast<double>(x[i] - max));
    if (targets == nullptr || targets[row] != 0) {
      const int32_t label = tokens[row + 1];
      trainer->loss_sum += std::log(sum) - static_cast<double>(x[label] - max);
      trainer->counted += 1;
      trainer->correct += best == label ? 1 : 0;
    } else {
      for (int64_t i = 0; i < n_vocab; ++i) y[i] = static_cast<float>(std::exp(static_cast<double>(x[i] - max)) / sum);
    }
  }
  return false;
}

ggml_opt_optimizer_params optimizer_params(void * userdata) {
  const auto * trainer = static_cast<const Trainer *>(userdata);
  ggml_opt_optimizer_params params = ggml_opt_get_default_optimizer_params(nullptr);
  params.adamw.alpha = trainer->learning_rate;
  params.adamw.wd = trainer->weight_decay;
  params.sgd.alpha = trainer->learning_rate;
  params.sgd.wd = trainer->weight_decay;
  return params;
}

void throw_error(napi_env env, const std::string & message) { napi_throw_error(env, nullptr, message.c_str()); }

std::string string_arg(napi_env env, napi_value value) {
  size_t length = 0;
  napi_get_value_string_utf8(env, value, nullptr, 0, &length);
  std::string result(length, '\0');
  napi_get_value_string_utf8(env, value, result.data(), length + 1, &length);
  return result;
}

double number_arg(napi_env env, napi_value value) {
  double result = 0;
  napi_get_value_double(env, value, &result);
  return result;
}

Trainer * trainer_arg(napi_env env, napi_value value) {
  void * data = nullptr;
  napi_get_value_external(env, value, &data);
  return static_cast<Trainer *>(data);
}

napi_value make_number(napi_env env, double value) {
  napi_value result;
  napi_create_double(env, value, &result);
  return result;
}

void free_trainer(Trainer * trainer) {
  if (trainer->ctx != nullptr) llama_free(trainer->ctx);
  if (trainer->model != nullptr) llama_model_free(trainer->model);
  trainer->ctx = nullptr;
  trainer->model = nullptr;
}

void finalize_trainer(napi_env, void * data, void *) {
  auto * trainer = static_cast<Trainer *>(data);
  free_trainer(trainer);
  delete trainer;
}

// llama.cpp's own logging (graph dumps on every step) is silenced unless WEFT_TRAINER_LOG is set.
void quiet_log(ggml_log_level level, const char * text, void *) {
  if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

// loadBackends(dir): registers the CPU backend from node-llama-cpp's prebuilt folder, once per process.
napi_value load_backends(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  if (getenv("WEFT_TRAINER_LOG") == nullptr) llama_log_set(quiet_log, nullptr);
  if (ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU) == nullptr) {
    ggml_backend_load_all_from_path(string_arg(env, argv[0]).c_str());
  }
  napi_value result;
  napi_get_boolean(env, ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU) != nullptr, &result);
  return result;
}

// open(modelPath, threads, optimizer: 0 adamw | 1 sgd) -> handle. The model is read fully (no mmap: the weights
// are written to) and the context spans the model's training context, as llama_opt_epoch requires.
napi_value open_trainer(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  const std::string path = string_arg(env, argv[0]);
  const int threads = static_cast<int>(number_arg(env, argv[1]));
  const int optimizer = static_cast<int>(number_arg(env, argv[2]));

  auto * trainer = new Trainer();
  llama_model_params model_params = llama_model_default_params();
  model_params.load_mode = LLAMA_LOAD_MODE_NONE;
  model_params.n_gpu_layers = 0;
  trainer->model = llama_model_load_from_file(path.c_str(), model_params);
  if (trainer->model == nullptr) {
    delete trainer;
    throw_error(env, "llama.cpp could not load " + path);
    return nullptr;
  }
  trainer->n_ctx = llama_model_n_ctx_train(trainer->model);
  trainer->n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(trainer->model));

  llama_context_params ctx_params = llama_context_default_params();
  ctx_params.n_ctx = static_cast<uint32_t>(trainer->n_ctx);
  ctx_params.n_batch = static_cast<uint32_t>(trainer->n_ctx);
  ctx_params.n_ubatch = static_cast<uint32_t>(trainer->n_ctx);
  ctx_params.n_seq_max = 1;
  ctx_params.n_threads = threads;
  ctx_params.n_threads_batch = threads;
  // The backward pass has no f16 OUT_PROD: the KV cache must be f32.
  ctx_params.type_k = GGML_TYPE_F32;
  ctx_params.type_v = GGML_TYPE_F32;
  ctx_params.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
  ctx_params.no_perf = true;
  ctx_params.cb_eval = observe_loss;
  ctx_params.cb_eval_user_data = trainer;
  trainer->ctx = llama_init_from_model(trainer->model, ctx_params);
  if (trainer->ctx == nullptr) {
    free_trainer(trainer);
    delete trainer;
    throw_error(env, "llama.cpp could not create a training context for " + path);
    return nullptr;
  }

  // llama_opt_epoch cuts the data into windows of the context's size but trains over the model's training context;
  // llama.cpp pads a context to a multiple of 256 tokens, so the two agree only when the model's does too.
  if (static_cast<int64_t>(llama_n_ctx(trainer->ctx)) != trainer->n_ctx) {
    const std::string message = "training needs a model whose training context is a multiple of 256 tokens; " + path + " has " +
      std::to_string(trainer->n_ctx);
    free_trainer(trainer);
    delete trainer;
    throw_error(env, message);
    return nullptr;
  }

  // llama_opt_epoch computes through the context's scheduler without setting the CPU backend's thread count, which
  // stays at ggml's default (4) until a decode sets it, nor the scheduler's eval callback: one throwaway decode sets
  // both (oversubscribed threads spin in ggml_barrier and made a step ~10x slower on 2 cores).
  llama_token first = 0;
  if (llama_decode(trainer->ctx, llama_batch_get_one(&first, 1)) != 0) {
    free_trainer(trainer);
    delete trainer;
    throw_error(env, "llama.cpp could not run the training context of " + path);
    return nullptr;
  }
  llama_memory_clear(llama_get_memory(trainer->ctx), true);

  llama_opt_params opt_params{};
  opt_params.n_ctx_train = 0;
  opt_params.param_filter = llama_opt_param_filter_all;
  opt_params.param_filter_ud = nullptr;
  opt_params.get_opt_pars = optimizer_params;
  opt_params.get_opt_pars_ud = trainer;
  opt_params.optimizer_type = optimizer == 1 ? GGML_OPT_OPTIMIZER_TYPE_SGD : GGML_OPT_OPTIMIZER_TYPE_ADAMW;
  llama_opt_init(trainer->ctx, trainer->model, opt_params);

  napi_value handle;
  napi_create_external(env, trainer, finalize_trainer, nullptr, &handle);
  return handle;
}

// info(handle) -> { contextLength, vocabSize }
napi_value trainer_info(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  Trainer * trainer = trainer_arg(env, argv[0]);
  napi_value result;
  napi_create_object(env, &result);
  napi_set_named_property(env, result, "contextLength", make_number(env, static_cast<double>(trainer->n_ctx)));
  napi_set_named_property(env, result, "vocabSize", make_number(env, static_cast<double>(trainer->n_vocab)));
  return result;
}

// setOptimizer(handle, learningRate, weightDecay): read by the optimizer at its next step.
napi_value set_optimizer(napi_env env, napi_callback_info info) {
  size_t argc = 3;
  napi_value argv[3];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  Trainer * trainer = trainer_arg(env, argv[0]);
  trainer->learning_rate = static_cast<float>(number_arg(env, argv[1]));
  trainer->weight_decay = static_cast<float>(number_arg(env, argv[2]));
  return nullptr;
}

struct Work {
  napi_async_work work = nullptr;
  napi_deferred deferred = nullptr;
  napi_ref handle_ref = nullptr;
  Trainer * trainer = nullptr;
  // step
  std::vector<int32_t> windows;  // ndata windows of n_ctx + 1 tokens: inputs are [0, n_ctx), labels [1, n_ctx]
  std::vector<uint8_t> targets;  // empty, or ndata * n_ctx flags: whether each label counts
  bool train = true;
  double loss = 0;
  double accuracy = 0;
  int64_t tokens = 0;
  int64_t counted = 0;
  // save
  std::string path;
  bool saving = false;
  std::string error;
};

void execute_work(napi_env, void * data) {
  auto * work = static_cast<Work *>(data);
  Trainer * trainer = work->trainer;
  if (work->saving) {
    llama_model_save_to_file(trainer->model, work->path.c_str());
    return;
  }
  const int64_t n_ctx = trainer->n_ctx;
  const int64_t ndata = static_cast<int64_t>(work->windows.size()) / (n_ctx + 1);
  ggml_opt_dataset_t dataset = ggml_opt_dataset_init(GGML_TYPE_I32, GGML_TYPE_I32, n_ctx, n_ctx, ndata, 1);
  auto * inputs = static_cast<int32_t *>(ggml_opt_dataset_data(dataset)->data);
  auto * labels = static_cast<int32_t *>(ggml_opt_dataset_labels(dataset)->data);
  for (int64_t i = 0; i < ndata; ++i) {
    const int32_t * window = work->windows.data() + i * (n_ctx + 1);
    std::memcpy(inputs + i * n_ctx, window, n_ctx * sizeof(int32_t));
    std::memcpy(labels + i * n_ctx, window + 1, n_ctx * sizeof(int32_t));
  }
  ggml_opt_result_t result_train = ggml_opt_result_init();
  ggml_opt_result_t result_eval = ggml_opt_result_init();
  trainer->windows = work->windows.data();
  trainer->targets = work->targets.empty() ? nullptr : work->targets.data();
  trainer->window = 0;
  trainer->loss_sum = 0;
  trainer->counted = 0;
  trainer->correct = 0;
  trainer->logits_ready = false;
  trainer->unmaskable = false;
  llama_opt_epoch(trainer->ctx, dataset, result_train, result_eval, work->train ? ndata : 0, nullptr, nullptr);
  trainer->windows = nullptr;
  trainer->targets = nullptr;
  if (trainer->unmaskable || trainer->window != ndata) {
    work->error = "the trainer could not read the logits before the loss (saw " + std::to_string(trainer->window) + " of " +
      std::to_string(ndata) + " windows)";
  }
  work->loss = trainer->counted > 0 ? trainer->loss_sum / static_cast<double>(trainer->counted) : NAN;
  work->accuracy = trainer->counted > 0 ? static_cast<double>(trainer->correct) / static_cast<double>(trainer->counted) : NAN;
  work->counted = trainer->counted;
  work->tokens = ndata * n_ctx;
  ggml_opt_result_free(result_train);
  ggml_opt_result_free(result_eval);
  ggml_opt_dataset_free(dataset);
}

void complete_work(napi_env env, napi_status status, void * data) {
  auto * work = static_cast<Work *>(data);
  work->trainer->busy = false;
  if (status != napi_ok || !work->error.empty()) {
    napi_value message;
    napi_create_string_utf8(env, work->error.empty() ? "trainer work was cancelled" : work->error.c_str(), NAPI_AUTO_LENGTH, &message);
    napi_value error;
    napi_create_error(env, nullptr, message, &error);
    napi_reject_deferred(env, work->deferred, error);
  } else if (work->saving) {
    napi_value undefined;
    napi_get_undefined(env, &undefined);
    napi_resolve_deferred(env, work->deferred, undefined);
  } else {
    napi_value result;
    napi_create_object(env, &result);
    napi_set_named_property(env, result, "loss", make_number(env, work->loss));
    napi_set_named_property(env, result, "accuracy", make_number(env, work->accuracy));
    napi_set_named_property(env, result, "tokens", make_number(env, static_cast<double>(work->tokens)));
    napi_set_named_property(env, result, "targets", make_number(env, static_cast<double>(work->counted)));
    napi_resolve_deferred(env, work->deferred, result);
  }
  napi_delete_reference(env, work->handle_ref);
  napi_delete_async_work(env, work->work);
  delete work;
}

napi_value queue_work(napi_env env, napi_value handle, Work * work, const char * name) {
  if (work->trainer->ctx == nullptr) {
    delete work;
    throw_error(env, "the trainer is closed");
    return nullptr;
  }
  if (work->trainer->busy) {
    delete work;
    throw_error(env, "the trainer is already running a step");
    return nullptr;
  }
  work->trainer->busy = true;
  napi_value promise;
  napi_create_promise(env, &work->deferred, &promise);
  napi_create_reference(env, handle, 1, &work->handle_ref);
  napi_value resource_name;
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource_name);
  napi_create_async_work(env, nullptr, resource_name, execute_work, complete_work, work, &work->work);
  napi_queue_async_work(env, work->work);
  return promise;
}

// step(handle, windows: Int32Array, train: boolean, targets?: Uint8Array) -> Promise<{ loss, accuracy, tokens, targets }>
// `targets` flags, per window, which of its contextLength labels count (loss, gradient, accuracy); absent: all do.
napi_value step(napi_env env, napi_callback_info info) {
  size_t argc = 4;
  napi_value argv[4];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  auto * work = new Work();
  work->trainer = trainer_arg(env, argv[0]);
  napi_typedarray_type type;
  size_t length = 0;
  void * data = nullptr;
  napi_get_typedarray_info(env, argv[1], &type, &length, &data, nullptr, nullptr);
  const size_t window = static_cast<size_t>(work->trainer->n_ctx + 1);
  if (type != napi_int32_array || length == 0 || length % window != 0) {
    delete work;
    throw_error(env, "step takes an Int32Array of whole windows of contextLength + 1 tokens");
    return nullptr;
  }
  const auto * tokens = static_cast<const int32_t *>(data);
  for (size_t i = 0; i < length; ++i) {
    if (tokens[i] < 0 || tokens[i] >= work->trainer->n_vocab) {
      delete work;
      throw_error(env, "token id out of the vocabulary: " + std::to_string(tokens[i]));
      return nullptr;
    }
  }
  work->windows.assign(tokens, tokens + length);
  napi_valuetype targets_type = napi_undefined;
  if (argc >= 4) napi_typeof(env, argv[3], &targets_type);
  if (targets_type != napi_undefined) {
    napi_typedarray_type flags_type;
    size_t flags_length = 0;
    void * flags = nullptr;
    bool typed = false;
    napi_is_typedarray(env, argv[3], &typed);
    if (typed) napi_get_typedarray_info(env, argv[3], &flags_type, &flags_length, &flags, nullptr, nullptr);
    const size_t windows = length / window;
    if (!typed || flags_type != napi_uint8_array || flags_length != windows * (window - 1)) {
      delete work;
      throw_error(env, "step's targets are a Uint8Array of contextLength flags per window");
      return nullptr;
    }
    const auto * bytes = static_cast<const uint8_t *>(flags);
    for (size_t at = 0; at < windows; ++at) {
      bool any = false;
      for (size_t i = 0; i < window - 1 && !any; ++i) any = bytes[at * (window - 1) + i] != 0;
      if (!any) {
        delete work;
        throw_error(env, "window " + std::to_string(at) + " has no label that counts");
        return nullptr;
      }
    }
    work->targets.assign(bytes, bytes + flags_length);
  }
  bool train = true;
  napi_get_value_bool(env, argv[2], &train);
  work->train = train;
  return queue_work(env, argv[0], work, "weft.trainer.step");
}

// save(handle, path) -> Promise<void>: the model with its current weights, as GGUF.
napi_value save(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  auto * work = new Work();
  work->trainer = trainer_arg(env, argv[0]);
  work->path = string_arg(env, argv[1]);
  work->saving = true;
  return queue_work(env, argv[0], work, "weft.trainer.save");
}

// close(handle): frees the model, its context and the optimizer's state now rather than when the handle is collected
// (V8 does not see their size). Throws while a step or save runs; closing twice does nothing.
napi_value close_trainer(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  Trainer * trainer = trainer_arg(env, argv[0]);
  if (trainer->busy) {
    throw_error(env, "the trainer is running a step; close it after the step");
    return nullptr;
  }
  free_trainer(trainer);
  return nullptr;
}

napi_value init(napi_env env, napi_value exports) {
  const napi_property_descriptor properties[] = {
    {"loadBackends", nullptr, load_backends, nullptr, nullptr, nullptr, napi_default, nullptr},
    {"open", nullptr, open_trainer, nullptr, nullptr, nullptr, napi_default, nullptr},
    {"info", nullptr, trainer_info, nullptr, nullptr, nullptr, napi_default, nullptr},
    {"setOptimizer", nullptr, set_optimizer, nullptr, nullptr, nullptr, napi_default, nullptr},
    {"step", nullptr, step, nullptr, nullptr, nullptr, napi_default, nullptr},
    {"save", nullptr, save, nullptr, nullptr, nullptr, napi_default, nullptr},
    {"close", nullptr, close_trainer, nullptr, nullptr, nullptr, napi_default, nullptr},
  };
  napi_define_properties(env, exports, sizeof(properties) / sizeof(properties[0]), properties);
  return exports;
}

}  // namespace

NAPI_MODULE(weft_trainer, init)
