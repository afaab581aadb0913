// The threads of one synthesis: a small pool whose idle workers sleep on a condition variable (passive wait).
//
// Why not OpenMP: libgomp's idle threads spin for a long time before they sleep (its OMP_WAIT_POLICY and
// GOMP_SPINCOUNT are read once, when the library loads, so a library cannot change them for itself without
// changing them for every other OpenMP user in the process). A synthesis runs hundreds of short parallel
// passes per level with serial work between them; spinning workers then steal the cores that the other
// propagation chain, the flow or the diffusion model need (README, Native synthesizer). Here a worker that
// finds no rows blocks at once, so a busy machine loses nothing to waiting threads.
//
// The pool belongs to one synthesis call (no global state): workers start with it and are joined when it is
// destroyed. Rows are handed out one at a time from an atomic counter; every pass of the synthesizer is a
// Jacobi step, so which thread runs which row never changes the result.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <type_traits>
#include <vector>

namespace rr {

class RowPool {
  public:
    // `threads` in all, the calling thread included: threads - 1 workers, started by the first call that
    // needs them (a synthesis whose levels are all small never starts one).
    explicit RowPool(int threads) : threads_(std::max(1, threads)) {}
    ~RowPool() {
        {
            std::lock_guard<std::mutex> lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        for (auto& t : workers_) t.join();
    }
    RowPool(const RowPool&) = delete;
    RowPool& operator=(const RowPool&) = delete;

    int threads() const { return threads_; }

    // f(y) for every y in [0, n), on up to `threads` threads (the caller's among them); returns when all
    // rows are done. With threads <= 1 (or one row) the caller runs them alone and no worker is woken.
    template <class F>
    void rows(int n, int threads, F&& f) {
        if (threads <= 1 || threads_ == 1 || n <= 1) {
            for (int y = 0; y < n; ++y) f(y);
            return;
        }
        if (workers_.empty()) {
            workers_.reserve(threads_ - 1);
            for (int i = 1; i < threads_; ++i) workers_.emplace_back([this] { work(); });
        }
        using Fn = std::remove_reference_t<F>;
        Job job;
        job.ctx = (void*)&f;
        job.run = [](void* ctx, int y) { (*(Fn*)ctx)(y); };
        job.n = n;
        job.next.store(0, std::memory_order_relaxed);
        const int helpers = std::min(threads, threads_) - 1;
        job.pending = helpers;
        {
            std::lock_guard<std::mutex> lock(mutex_);
            job_ = &job;
            wanted_ = helpers;
            ++generation_;
        }
        wake_.notify_all();
        drain(job);
        std::unique_lock<std::mutex> lock(mutex_);
        done_.wait(lock, [&] { return job.pending == 0; });
        job_ = nullptr;
    }

  private:
    struct Job {
        void* ctx = nullptr;
        void (*run)(void*, int) = nullptr;
        int n = 0;
        std::atomic<int> next{0};
        int pending = 0;  // helpers that have not finished yet (guarded by mutex_)
    };

    static void drain(Job& job) {
        for (int y = job.next.fetch_add(1, std::memory_order_relaxed); y < job.n;
             y = job.next.fetch_add(1, std::memory_order_relaxed))
            job.run(job.ctx, y);
    }

    void work() {
        uint64_t seen = 0;
        std::unique_lock<std::mutex> lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return stop_ || (generation_ != seen && wanted_ > 0); });
            if (stop_) return;
            seen = generation_;
            --wanted_;
            Job* job = job_;
            lock.unlock();
            drain(*job);
            lock.lock();
            if (--job->pending == 0) done_.notify_one();
        }
    }

    const int threads_;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    Job* job_ = nullptr;
    uint64_t generation_ = 0;
    int wanted_ = 0;  // workers still to join the current job
    bool stop_ = false;
};

// Cores this process may run on (its CPU affinity), at least 1.
int available_cores();

}  // namespace rr
