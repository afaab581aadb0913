// CPU executor of the search-vote schedule (synth_driver.h) over the per-pixel functions of synth_core.h,
// run by the passively waiting threads of thread_pool.h.
//
// Differences from the reference CPU build that make it fast and deterministic (see README, Native synthesizer):
// * passes are Jacobi steps (jump flood 4-2-1 propagation, then random search), parallel over rows; a pixel's
//   decision reads only frozen inputs, so the thread count does not change the result;
// * the occupancy (uniformity) sum over a p x p patch is a precomputed map (O(1) per candidate, checked before
//   the SSD so the SSD's early exit uses the tightest bound), kept exact in integers and updated per pass;
// * the stop-threshold mask of the CUDA reference (synthesis.md §8) is used on CPU as well;
// * channels are interleaved floats pre-multiplied by sqrt(weight) so a patch row is one contiguous dot.
#include "synth_cpu.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <thread>

#include "pyramid.h"
#include "synth_core.h"
#include "synth_driver.h"
#include "thread_pool.h"

namespace rr {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

double now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }

// Occupancy map Ω and the sum of Ω over each p x p source patch (synthesis.md §5), kept as exact integers:
// occ[s] = sum over matched source positions m of (p - |dx|)(p - |dy|) with (dx, dy) = s - m, |dx|, |dy| < p,
// i.e. the box filter applied twice to the match histogram. Rebuilt in O(|S|) or updated per changed match.
class Occupancy {
  public:
    Occupancy(int sw, int sh, int p) : sw_(sw), sh_(sh), p_(p) {
        hist_.assign((size_t)sw * sh, 0);
        a_.assign((size_t)sw * sh, 0);
        b_.assign((size_t)sw * sh, 0);
        occ_.assign((size_t)sw * sh, 0.0f);
    }
    const float* data() const { return occ_.data(); }

    void rebuild(const int32_t* nnf, size_t n) {
        std::fill(hist_.begin(), hist_.end(), 0);
        for (size_t i = 0; i < n; ++i) ++hist_[(size_t)nnf[2 * i + 1] * sw_ + nnf[2 * i]];
        box_h(hist_, a_);
        box_h(a_, b_);
        box_v(b_, a_);
        box_v(a_, b_);
        for (size_t i = 0; i < b_.size(); ++i) occ_[i] = (float)b_[i];
    }

    // Apply the matches that changed between two NNFs: -1 at the old source, +1 at the new one.
    void update(const int32_t* before, const int32_t* after, size_t n) {
        changed_.clear();
        for (size_t i = 0; i < n; ++i)
            if (before[2 * i] != after[2 * i] || before[2 * i + 1] != after[2 * i + 1]) changed_.push_back(i);
        if (changed_.empty()) return;
        // Splatting costs 2 (2p-1)^2 per change, a rebuild a few passes over |S|: pick the cheaper one.
        if (changed_.size() * 16 > hist_.size()) {
            rebuild(after, n);
            return;
        }
        for (size_t i : changed_) {
            splat(before[2 * i], before[2 * i + 1], -1);
            splat(after[2 * i], after[2 * i + 1], +1);
        }
    }

  private:
    void splat(int mx, int my, int sign) {
        for (int dy = -(p_ - 1); dy <= p_ - 1; ++dy) {
            const int y = my + dy;
            if (y < 0 || y >= sh_) continue;
            const int wy = p_ - std::abs(dy);
            for (int dx = -(p_ - 1); dx <= p_ - 1; ++dx) {
                const int x = mx + dx;
                if (x < 0 || x >= sw_) continue;
                b_[(size_t)y * sw_ + x] += sign * wy * (p_ - std::abs(dx));
                occ_[(size_t)y * sw_ + x] = (float)b_[(size_t)y * sw_ + x];
            }
        }
    }
    void box_h(const std::vector<int32_t>& in, std::vector<int32_t>& out) const {
        const int r = p_ / 2, w = sw_;
        for (int y = 0; y < sh_; ++y) {
            const int32_t* s = in.data() + (size_t)y * w;
            int32_t* d = out.data() + (size_t)y * w;
            int32_t acc = 0;
            for (int x = 0; x < std::min(r, w); ++x) acc += s[x];
            for (int x = 0; x < w; ++x) {
                if (x + r < w) acc += s[x + r];
                if (x - r - 1 >= 0) acc -= s[x - r - 1];
                d[x] = acc;
            }
        }
    }
    void box_v(const std::vector<int32_t>& in, std::vector<int32_t>& out) const {
        const int r = p_ / 2, w = sw_, h = sh_;
        const int chunk = 64, nchunks = (w + chunk - 1) / chunk;
        for (int c = 0; c < nchunks; ++c) {
            const int x0 = c * chunk, x1 = std::min(w, x0 + chunk);
            int32_t acc[64];
            for (int x = x0; x < x1; ++x) acc[x - x0] = 0;
            for (int y = 0; y < std::min(r, h); ++y)
                for (int x = x0; x < x1; ++x) acc[x - x0] += in[(size_t)y * w + x];
            for (int y = 0; y < h; ++y) {
                if (y + r < h)
                    for (int x = x0; x < x1; ++x) acc[x - x0] += in[(size_t)(y + r) * w + x];
                if (y - r - 1 >= 0)
                    for (int x = x0; x < x1; ++x) acc[x - x0] -= in[(size_t)(y - r - 1) * w + x];
                for (int x = x0; x < x1; ++x) out[(size_t)y * w + x] = acc[x - x0];
            }
        }
    }

    int sw_, sh_, p_;
    std::vector<int32_t> hist_, a_, b_;
    std::vector<float> occ_;
    std::vector<size_t> changed_;
};

// Interleaved, weighted, padded float channels of one image: style (or estimate) channels, then guides.
// Without a style (the target), the style channels stay 0 until the first vote fills them.
std::vector<float> pack(const Image8* style, int ns, const Image8& guide, int np, const float* sw,
                        const float* gw) {
    const size_t n = (size_t)guide.w * guide.h;
    std::vector<float> out(n * np, 0.0f);
    for (size_t i = 0; i < n; ++i) {
        float* o = out.data() + i * np;
        if (style)
            for (int c = 0; c < ns; ++c) o[c] = sw[c] * style->data[i * ns + c];
        for (int g = 0; g < guide.c; ++g) o[ns + g] = gw[g] * guide.data[i * guide.c + g];
    }
    return out;
}

// The CPU executor of the schedule in synth_driver.h: rows in parallel on a RowPool, with incremental votes,
// errors and occupancy (each is exactly what a full recomputation would give, only cheaper).
class CpuExec {
  public:
    CpuExec(const SynthInputs& in, const SynthConfig& cfg)
        : in_(in), cfg_(cfg), max_threads_(cfg.threads > 0 ? cfg.threads : available_cores()), pool_(max_threads_) {
        ns_ = in.ns;
        np_ = ((in.ns + in.ng) + 3) / 4 * 4;
        for (int c = 0; c < in.ns; ++c) style_scale_[c] = std::sqrt(in.style_weights[c]);
        guide_scale_.resize(in.ng);
        for (int g = 0; g < in.ng; ++g) guide_scale_[g] = std::sqrt(in.guide_weights[g]);
        const int L = cfg.levels;
        styles_ = build_pyramid(in_.style, in_.sw, in_.sh, in_.ns, L);
        sguides_ = build_pyramid(in_.source_guide, in_.sw, in_.sh, in_.ng, L);
        tguides_ = build_pyramid(in_.target_guide, in_.tw, in_.th, in_.ng, L);
    }

    void finish(SynthOutputs& out) {
        out.stats = stats_;
        const size_t n = (size_t)tw_ * th_;
        out.image = est_;
        out.error = err_;
        out.nnf.assign(nnf_.begin(), nnf_.begin() + 2 * n);
        out.stats.patch_evaluations = evaluations_.load();
        out.stats.threads = threads_;
    }

    // -- the executor interface of synth_driver.h ------------------------------------------------------
    int64_t level_pixels() const { return (int64_t)tw_ * th_; }
    int64_t source_pixels() const { return (int64_t)sw_ * sh_; }

    void begin_level(int l) {
        level_t0_ = now();
        level_ = l;
        const Image8& style = styles_[l];
        const Image8& sguide = sguides_[l];
        const Image8& tguide = tguides_[l];
        ptw_ = tw_;
        pth_ = th_;
        sw_ = style.w;
        sh_ = style.h;
        tw_ = tguide.w;
        th_ = tguide.h;
        // Small levels run on one thread: a pass there is shorter than waking a team (hundreds of passes per
        // level make that overhead dominate on a busy machine). Results do not depend on the thread count.
        threads_ = (size_t)std::max(tw_ * th_, sw_ * sh_) < kMinPixelsPerThread ? 1 : max_threads_;
        style_ = &style;
        src_ = pack(&style, ns_, sguide, np_, style_scale_, guide_scale_.data());
        tgt_ = pack(nullptr, ns_, tguide, np_, style_scale_, guide_scale_.data());
        const size_t n = (size_t)tw_ * th_;
        nnf2_.assign(2 * n, 0);
        err_.assign(n, 0.0f);
        err2_.assign(n, 0.0f);
        est_.assign(n * ns_, 0);
        prev_est_.assign(n * ns_, 0);
        active_.assign(n, 1);
        changed_.assign(n, 0);
        any_change_.assign(n, 0);
        err_dirty_.assign(n, 1);
    }

    void end_level() { stats_.level_seconds.push_back(now() - level_t0_); }

    void init_random(int r) {
        nnf_.assign(2 * (size_t)tw_ * th_, 0);
        for (int y = 0; y < th_; ++y)
            for (int x = 0; x < tw_; ++x) {
                const size_t i = (size_t)y * tw_ + x;
                const unsigned int h = pixel_stream(cfg_.seed, 0xFFFFFFFFu, x, y);
                nnf_[2 * i] = r + (int)(h % (unsigned int)(sw_ - 2 * r));
                nnf_[2 * i + 1] = r + (int)(hash32(h) % (unsigned int)(sh_ - 2 * r));
            }
    }

    void init_from_caller(int r) {
        nnf_.assign(2 * (size_t)tw_ * th_, 0);
        for (int y = 0; y < th_; ++y)
            for (int x = 0; x < tw_; ++x) {
                const size_t i = (size_t)y * tw_ + x;
                init_candidate(x, y, r, nnf_[2 * i], nnf_[2 * i + 1]);
            }
    }

    // NNF upsampling (synthesis.md §3 step 1): the child takes its parent's match x2 plus its own parity.
    void upsample_nnf(int r) {
        std::vector<int32_t> nnf(2 * (size_t)tw_ * th_);
        for (int y = 0; y < th_; ++y)
            for (int x = 0; x < tw_; ++x) {
                const int px = std::min(x / 2, ptw_ - 1), py = std::min(y / 2, pth_ - 1);
                const size_t j = (size_t)py * ptw_ + px, i = (size_t)y * tw_ + x;
                nnf[2 * i] = clampi(nnf_[2 * j] * 2 + (x & 1), r, sw_ - r - 1);
                nnf[2 * i + 1] = clampi(nnf_[2 * j + 1] * 2 + (y & 1), r, sh_ - r - 1);
            }
        nnf_.swap(nnf);
    }

    void clamp_nnf(int r) {
        const size_t n = (size_t)tw_ * th_;
        for (size_t i = 0; i < n; ++i) {
            nnf_[2 * i] = clampi(nnf_[2 * i], r, sw_ - r - 1);
            nnf_[2 * i + 1] = clampi(nnf_[2 * i + 1], r, sh_ - r - 1);
        }
    }

    void reset_active() { std::fill(active_.begin(), active_.end(), 1); }

    void keep_carried(int r) {
        const int shift = std::max(0, cfg_.levels - 1 - level_);
        parallel_rows(th_, threads_, [&](int y) {
            for (int x = 0; x < tw_; ++x) {
                const size_t i = (size_t)y * tw_ + x;
                const bool kept = kept_at_level(in_.keep, in_.tw, in_.th, shift, x, y);
                if (kept) init_candidate(x, y, r, nnf_[2 * i], nnf_[2 * i + 1]);
                active_[i] = kept ? 0 : 1;
            }
        });
    }

    // Voting (synthesis.md §6). A plain vote of a pixel depends only on the matches within the patch radius, so after the
    // first vote of a level only pixels near a changed match are re-voted (the others would get the same value).
    void vote(int p, bool weighted, bool first) {
        Timer t(stats_.vote);
        prev_est_.swap(est_);
        const int r = p / 2;
        const bool incremental = !first && !weighted;
        if (incremental) {
            nnf_changed(nnf_, nnf_at_vote_, changed_);
            dilate(changed_, vote_dirty_, r);
        }
        parallel_rows(th_, threads_, [&](int y) {
            for (int x = 0; x < tw_; ++x) {
                const size_t i = (size_t)y * tw_ + x;
                if (incremental && !vote_dirty_[i]) {
                    for (int c = 0; c < ns_; ++c) est_[i * ns_ + c] = prev_est_[i * ns_ + c];
                    continue;
                }
                vote_pixel(style_->data.data(), sw_, ns_, nnf_.data(), err_.data(), tw_, th_, r, weighted,
                           style_scale_, x, y, est_.data(), tgt_.data(), np_);
            }
        });
        nnf_at_vote_ = nnf_;
    }

    // After a vote: the stop-threshold mask (synthesis.md §8: pixels whose estimate changed by >= threshold, dilated by the
    // patch radius) and the pixels whose patch error must be recomputed (estimate changed at all in the patch).
    void update_masks(int r, bool stop_mask) {
        parallel_rows(th_, 1, [&](int y) {
            for (int x = 0; x < tw_; ++x) {
                const size_t i = (size_t)y * tw_ + x;
                changed_[i] = style_changed(est_.data(), prev_est_.data(), ns_, cfg_.stop_threshold, i);
                any_change_[i] = style_changed(est_.data(), prev_est_.data(), ns_, 1, i);
            }
        });
        if (stop_mask) dilate(changed_, active_, r);
        dilate(any_change_, err_dirty_, r);
    }

    void begin_iteration(int p, bool occupancy, float occ_scale) {
        stats_.active_pixels.push_back(std::count(active_.begin(), active_.end(), 1));
        if (!occ_ || occ_p_ != p || occ_sw_ != sw_ || occ_sh_ != sh_) {
            // Serial: O(|S|) integer box filters take about a millisecond; a parallel region plus its
            // barriers costs more than that on a busy machine.
            occ_ = std::make_unique<Occupancy>(sw_, sh_, p);
            occ_p_ = p;
            occ_sw_ = sw_;
            occ_sh_ = sh_;
        }
        occp_ = occupancy ? occ_.get() : nullptr;
        if (occp_) {
            Timer t(stats_.occupancy);
            occp_->rebuild(nnf_.data(), (size_t)tw_ * th_);
        }
        view_ = view(p, occp_, occ_scale);
    }

    void recompute_error(bool all) {
        Timer t(stats_.error);
        const SynthView& v = view_;
        parallel_rows(th_, threads_, [&](int y) {
            int64_t evals = 0;
            for (int x = 0; x < tw_; ++x) {
                const size_t i = (size_t)y * tw_ + x;
                if (all || err_dirty_[i]) {
                    err_[i] = patch_error(v, x, y, nnf_[2 * i], nnf_[2 * i + 1], kInf);
                    ++evals;
                }
            }
            evaluations_ += evals;
        });
    }

    void final_error(int p) {
        view_ = view(p, nullptr, 0.0f);
        recompute_error(true);
    }

    void begin_search() {
        search_ = active_;
        if (cfg_.patchmatch_iters > 0) stats_.searched_pixels.push_back(std::count(search_.begin(), search_.end(), 1));
    }

    void pass_init() {
        const SynthView& v = view_;
        const int r = v.r;
        pass([&](int x, int y, int& evals) {
            Match best = current_match(v, nnf_.data(), err_.data(), x, y);
            int32_t sx, sy;
            init_candidate(x, y, r, sx, sy);
            try_candidate(v, x, y, sx, sy, best, evals);
            return best;
        });
    }

    int64_t converge(int radius) {
        const size_t n = (size_t)tw_ * th_;
        improved(changed_);
        dilate(changed_, search_, radius);
        int64_t left = 0;
        for (size_t i = 0; i < n; ++i) left += (search_[i] &= active_[i]);
        stats_.searched_pixels.push_back(left);
        return left;
    }

    void snapshot() {
        nnf_at_pm_ = nnf_;
        err_at_pm_ = err_;
    }

    void pass_propagate(int k) {
        const double tp = stats_.search;
        const SynthView& v = view_;
        pass([&](int x, int y, int& evals) { return propagate_pixel(v, nnf_.data(), err_.data(), x, y, k, evals); });
        stats_.propagation += stats_.search - tp;
    }

    void pass_random(unsigned int pid) {
        const SynthView& v = view_;
        pass([&](int x, int y, int& evals) {
            const Match cur = current_match(v, nnf_.data(), err_.data(), x, y);
            return random_search_pixel(v, cur, x, y, cfg_.seed, pid, evals);
        });
    }

  private:
    template <class F>
    void parallel_rows(int h, int threads, F&& f) {
        pool_.rows(h, threads, f);
    }

    // The caller's finest-level NNF mapped to this level's target and source sizes.
    void init_candidate(int x, int y, int r, int32_t& sx, int32_t& sy) const {
        const int fx = std::min(in_.tw - 1, (int)((x + 0.5) * in_.tw / tw_));
        const int fy = std::min(in_.th - 1, (int)((y + 0.5) * in_.th / th_));
        const size_t j = (size_t)fy * in_.tw + fx;
        sx = clampi((int)((in_.init_nnf[2 * j] + 0.5) * sw_ / in_.sw), r, sw_ - r - 1);
        sy = clampi((int)((in_.init_nnf[2 * j + 1] + 0.5) * sh_ / in_.sh), r, sh_ - r - 1);
    }

    SynthView view(int p, const Occupancy* occ, float occ_scale) const {
        SynthView v;
        v.src = src_.data();
        v.tgt = tgt_.data();
        v.occ = occ ? occ->data() : nullptr;
        v.sw = sw_;
        v.sh = sh_;
        v.tw = tw_;
        v.th = th_;
        v.np = np_;
        v.p = p;
        v.r = p / 2;
        v.occ_scale = occ_scale;
        return v;
    }

    // Box dilation of a 0/1 mask by radius r (separable max). The mask helpers below are O(pixels) byte
    // operations and run serially for the same reason as the occupancy update.
    void dilate(const std::vector<uint8_t>& in, std::vector<uint8_t>& out, int r) {
        tmp_mask_.resize(in.size());
        parallel_rows(th_, 1, [&](int y) {
            const uint8_t* row = in.data() + (size_t)y * tw_;
            for (int x = 0; x < tw_; ++x) {
                uint8_t m = 0;
                for (int xx = std::max(0, x - r); xx <= std::min(tw_ - 1, x + r) && !m; ++xx) m = row[xx];
                tmp_mask_[(size_t)y * tw_ + x] = m;
            }
        });
        out.resize(in.size());
        parallel_rows(th_, 1, [&](int y) {
            for (int x = 0; x < tw_; ++x) {
                uint8_t m = 0;
                for (int yy = std::max(0, y - r); yy <= std::min(th_ - 1, y + r) && !m; ++yy)
                    m = tmp_mask_[(size_t)yy * tw_ + x];
                out[(size_t)y * tw_ + x] = m;
            }
        });
    }

    // Pixels whose match differs between two NNFs.
    void nnf_changed(const std::vector<int32_t>& a, const std::vector<int32_t>& b, std::vector<uint8_t>& out) {
        out.resize((size_t)tw_ * th_);
        parallel_rows(th_, 1, [&](int y) {
            for (int x = 0; x < tw_; ++x) {
                const size_t i = (size_t)y * tw_ + x;
                out[i] = a[2 * i] != b[2 * i] || a[2 * i + 1] != b[2 * i + 1];
            }
        });
    }

    // Pixels whose last PatchMatch iteration improved them significantly (synth_core.h).
    void improved(std::vector<uint8_t>& out) {
        out.resize((size_t)tw_ * th_);
        parallel_rows(th_, 1, [&](int y) {
            for (int x = 0; x < tw_; ++x) {
                const size_t i = (size_t)y * tw_ + x;
                out[i] = improved_significantly(nnf_.data(), nnf_at_pm_.data(), err_.data(), err_at_pm_.data(), i);
            }
        });
    }

    // One Jacobi pass: every active pixel computes its new match from (nnf_, err_) into (nnf2_, err2_).
    template <class F>
    void pass(F&& pixel) {
        const double t0 = now();
        parallel_rows(th_, threads_, [&](int y) {
            int evals = 0;
            for (int x = 0; x < tw_; ++x) {
                const size_t i = (size_t)y * tw_ + x;
                Match m;
                if (search_[i]) {
                    m = pixel(x, y, evals);
                } else {
                    m.x = nnf_[2 * i];
                    m.y = nnf_[2 * i + 1];
                    m.err = err_[i];
                }
                nnf2_[2 * i] = m.x;
                nnf2_[2 * i + 1] = m.y;
                err2_[i] = m.err;
            }
            evaluations_ += evals;
        });
        const double t1 = now();
        stats_.search += t1 - t0;
        if (occp_) occp_->update(nnf_.data(), nnf2_.data(), (size_t)tw_ * th_);
        stats_.occupancy += now() - t1;
        nnf_.swap(nnf2_);
        err_.swap(err2_);
    }

    struct Timer {
        double& sink;
        double t0;
        explicit Timer(double& s) : sink(s), t0(now()) {}
        ~Timer() { sink += now() - t0; }
    };

    SynthStats stats_;
    const SynthInputs& in_;
    SynthConfig cfg_;
    static constexpr size_t kMinPixelsPerThread = 16384;
    int threads_ = 1;
    const int max_threads_;
    RowPool pool_;
    std::atomic<int64_t> evaluations_{0};
    int ns_ = 0, np_ = 0;
    float style_scale_[8] = {0};
    std::vector<float> guide_scale_;
    std::vector<Image8> styles_, sguides_, tguides_;
    int sw_ = 0, sh_ = 0, tw_ = 0, th_ = 0, ptw_ = 0, pth_ = 0, level_ = 0;
    double level_t0_ = 0;
    const Image8* style_ = nullptr;
    std::unique_ptr<Occupancy> occ_;
    Occupancy* occp_ = nullptr;
    int occ_p_ = 0, occ_sw_ = 0, occ_sh_ = 0;
    SynthView view_{};
    std::vector<float> src_, tgt_, err_, err2_, err_at_pm_;
    std::vector<int32_t> nnf_, nnf2_;
    std::vector<int32_t> nnf_at_vote_, nnf_at_pm_;
    std::vector<uint8_t> est_, prev_est_, active_, changed_, any_change_, search_, vote_dirty_, err_dirty_,
        tmp_mask_;
};

}  // namespace

int available_cores() {
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
    return std::max(1u, std::thread::hardware_concurrency());
}

void synthesize_cpu(const SynthInputs& in, const SynthConfig& cfg, SynthOutputs& out) {
    CpuExec ex(in, cfg);
    run_schedule(ex, cfg, in.init_nnf != nullptr, in.init_nnf != nullptr && in.keep != nullptr);
    ex.finish(out);
}

}  // namespace rr
